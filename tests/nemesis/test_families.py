"""The nemesis' dispatch on a fake cluster: refusal for missing means, routing by kind,
recording, and a teardown that tries every undo and reports what failed.

The fake stands in only for the cluster's fault primitives (it records the calls), so these
are unit tests of the dispatch; the same faults on real processes are in
test_nemesis_on_cluster.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_cluster import FakeCluster, FakeToxiproxy

from harness.cluster import UnsupportedFault
from harness.history import History
from harness.nemesis import (
    FAULTS,
    Context,
    Family,
    Fault,
    FaultInstance,
    Nemesis,
    NemesisError,
    TeardownError,
    compose,
)


def completions(history: History) -> list[tuple[str, str, Any]]:
    return [(op.f, op.type, op.value.get("action")) for op in history.ops if op.type != "invoke"]


def test_a_family_refuses_a_fault_whose_means_the_cluster_lacks_in_one_line():
    cluster = FakeCluster(refusals={"pause": "this runtime cannot stop a process (no SIGSTOP)"})
    history = History()
    nemesis = Nemesis(cluster, history)
    with pytest.raises(UnsupportedFault) as refused:
        nemesis.invoke(FAULTS["pause-one"].on(2))
    assert str(refused.value) == (
        "pause-one needs pause: this runtime cannot stop a process (no SIGSTOP)"
    )
    assert cluster.calls == []  # refused before anything happened
    failed = history.ops[-1]
    assert (failed.f, failed.type) == ("pause-one", "fail")
    assert "pause-one needs pause" in failed.error
    nemesis.invoke(FAULTS["kill-one"].on(2))  # another family, other means: applied
    assert cluster.calls == [("kill", 2)]


def test_every_family_declares_means_the_cluster_knows():
    from harness.cluster import Cluster
    from harness.nemesis import default_families

    for family in default_families():
        assert set(family.needs) <= set(Cluster.MEANS), family.name
        assert family.kinds, family.name


class Recorder(Family):
    def __init__(self, name: str, kinds: tuple[str, ...], log: list[str]) -> None:
        self.name, self.kinds, self.log = name, kinds, log

    def invoke(self, ctx: Context, instance: FaultInstance, action: str):
        self.log.append(f"{self.name} {instance.name} {action}")
        return set(), set()

    def teardown(self, ctx: Context) -> None:
        self.log.append(f"{self.name} teardown")


def test_compose_routes_each_kind_to_its_family():
    log: list[str] = []
    composed = compose(Recorder("links", ("toxic",), log), Recorder("procs", ("kill",), log))
    ctx = Context(FakeCluster())
    composed.invoke(ctx, FAULTS["kill-one"].on(1), "start")
    composed.invoke(ctx, FAULTS["gossip-down"].on(2), "start")
    composed.teardown(ctx)
    assert log == [
        "procs kill-one start", "links gossip-down start", "links teardown", "procs teardown",
    ]
    assert composed.kinds == ("toxic", "kill") and composed.name == "links+procs"
    with pytest.raises(NemesisError, match=r"no fault family here handles 'pause'.*procs \(kill\)"):
        composed.invoke(ctx, FAULTS["pause-one"].on(1), "start")
    with pytest.raises(NemesisError, match="'kill' is handled by both procs and again"):
        compose(composed, Recorder("again", ("kill",), log))


def test_teardown_tries_every_undo_then_reports_each_failure():
    cluster = FakeCluster(broken=("resume", "restart_store"))
    history = History()
    nemesis = Nemesis(cluster, history, toxiproxy=FakeToxiproxy())
    nemesis.invoke(FAULTS["kill-one"].on(2))
    nemesis.invoke(FAULTS["pause-one"].on(1))
    nemesis.invoke(FAULTS["kill-store"].on())
    nemesis.invoke(FAULTS["partition-halves"].against({3: frozenset({1, 2})}, [1, 2, 3]))
    with pytest.raises(TeardownError) as failed:
        nemesis.teardown()
    message = str(failed.value)
    assert "resume node 1: RuntimeError: resume failed on purpose" in message
    assert "restart the store: RuntimeError: restart_store failed on purpose" in message
    undone = cluster.calls[4:]
    assert undone == [("heal",), ("resume", 1), ("restart", 2), ("restart_store",)]
    heal = history.ops[-1]
    assert (heal.f, heal.type) == ("heal", "info")  # some undos happened: outcome unknown
    cluster.broken = ()
    assert nemesis.heal() is not None  # nothing left to undo: a clean heal
    assert cluster.calls[len(undone) + 4:] == []


def test_restart_is_a_kill_then_a_start_and_a_node_held_down_elsewhere_is_not_up():
    cluster = FakeCluster()
    history = History()
    nemesis = Nemesis(cluster, history)
    nemesis.invoke(FAULTS["restart-one"].on(3))
    kill, start = [op for op in history.ops if op.type == "ok"]
    assert (kill.value["phase"], kill.value["down"], kill.value["up"]) == ("kill", [3], [])
    assert (start.value["phase"], start.value["down"], start.value["up"]) == ("start", [], [3])
    assert cluster.calls == [("kill", 3), ("restart", 3)]

    nemesis.invoke(FAULTS["pause-one"].on(1))
    cut = FAULTS["partition-isolate-one"].against({1: frozenset({2, 3})}, [1, 2, 3])
    nemesis.invoke(cut, "start")
    resumed = nemesis.invoke(FAULTS["pause-one"].on(1), "stop")
    assert resumed is not None and resumed.value["up"] == []  # still cut off
    healed = nemesis.invoke(cut, "stop")
    assert healed is not None and healed.value["up"] == [1]


def test_join_brings_a_late_node_up_once_and_heal_does_not_start_it():
    cluster = FakeCluster(4, pending=(4,))
    history = History()
    nemesis = Nemesis(cluster, history)
    healed = nemesis.heal()
    assert healed is not None and healed.value["up"] == [] and cluster.calls == []
    joined = nemesis.join(4)
    assert joined is not None and (joined.f, joined.value["nodes"], joined.value["up"]) == (
        "join", [4], [4]
    )
    assert cluster.calls == [("join", 4)]


def test_toxics_on_chosen_links_are_removed_and_proxies_enabled_again():
    cluster = FakeCluster()
    toxiproxy = FakeToxiproxy()
    nemesis = Nemesis(cluster, History(), toxiproxy=toxiproxy)
    slow = Fault("toxic", target="all", link="client", toxic="latency",
                 attributes={"latency": 300, "jitter": 50}).on(1, 2, 3)
    assert slow.name == "client-latency-all" and slow.down == ()
    nemesis.invoke(slow, "start")
    assert {p: list(t) for p, t in toxiproxy.toxics.items()} == {
        f"node-{n}-client": ["nemesis-client-latency-all"] for n in (1, 2, 3)
    }
    assert toxiproxy.toxics["node-2-client"]["nemesis-client-latency-all"]["attributes"] == {
        "latency": 300, "jitter": 50
    }
    nemesis.invoke(slow, "stop")
    assert all(not t for t in toxiproxy.toxics.values())

    nemesis.invoke(FAULTS["store-down"].on(), "start")
    nemesis.invoke(FAULTS["gossip-timeout"].on(2), "start")
    assert toxiproxy.disabled == {"store-store"}
    toxiproxy.toxics.clear()  # a partition's heal puts every proxy back to normal
    nemesis.teardown()
    assert toxiproxy.disabled == set()


def test_a_crash_kills_a_process_of_this_machine_and_a_gone_one_is_refused():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    history = History()
    nemesis = Nemesis(FakeCluster(), history)
    crash = Fault("crash", program="consumer", attributes={"pid": sleeper.pid}).on()
    assert crash.name == "crash-consumer" and crash.nodes == () and crash.down == ()
    nemesis.invoke(crash)
    assert sleeper.wait(timeout=10) == -9
    with pytest.raises(NemesisError, match="no process .* to crash"):
        nemesis.invoke(crash)
    assert completions(history) == [
        ("crash-consumer", "ok", "start"), ("crash-consumer", "fail", "start")
    ]
    with pytest.raises(NemesisError, match="a crash needs the process id"):
        Fault("crash")


def _state(pid: int) -> str:
    """The process's state letter (T: stopped), from /proc/<pid>/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, wanted: str) -> str:
    deadline = time.monotonic() + 10  # a signal is delivered in microseconds
    while _state(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return _state(pid)


def test_a_freeze_stops_a_process_until_the_fault_ends_or_teardown():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        history = History()
        nemesis = Nemesis(FakeCluster(), history)
        freeze = Fault("freeze", program="connector", attributes={"pid": sleeper.pid}).on()
        assert freeze.name == "freeze-connector" and freeze.nodes == () and freeze.down == ()
        nemesis.invoke(freeze)
        assert _wait_state(sleeper.pid, "T") == "T"
        nemesis.invoke(freeze, "stop")
        assert _wait_state(sleeper.pid, "S") == "S"
        nemesis.invoke(freeze)  # frozen again, and left so: teardown continues it
        assert _wait_state(sleeper.pid, "T") == "T"
        nemesis.teardown()
        assert _wait_state(sleeper.pid, "S") == "S"
        # A process that died while frozen (with its node, say): its stop has nothing to do.
        nemesis.invoke(freeze)
        sleeper.kill()
        sleeper.wait(timeout=10)
        nemesis.invoke(freeze, "stop")
        assert [c[1:] for c in completions(history)] == [
            ("ok", "start"), ("ok", "stop"), ("ok", "start"), ("ok", "heal"), ("ok", "start"),
            ("ok", "stop")]
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    with pytest.raises(NemesisError, match="a freeze needs the process id"):
        Fault("freeze")


def test_explicit_grudges_are_checked_and_give_the_cut_off_side_as_down():
    cut = FAULTS["partition-isolate-one"].against(
        {2: frozenset({1, 3}), 1: frozenset({2}), 3: frozenset({2})}, [1, 2, 3]
    )
    assert cut.down == (2,) and cut.nodes == (1, 2, 3)
    with pytest.raises(NemesisError, match="not in the cluster"):
        FAULTS["partition-halves"].against({7: frozenset({1})}, [1, 2, 3])
    with pytest.raises(NemesisError, match="only a partition takes a grudge"):
        FAULTS["kill-one"].against({1: frozenset({2})}, [1, 2])
    with pytest.raises(NemesisError, match="aimed by its grudge"):
        FAULTS["partition-halves"].on(1)


def test_a_schedule_ends_healed_once_and_an_interrupted_one_is_torn_down():
    import threading

    from harness.nemesis import Schedule, Step

    kill = FAULTS["kill-one"].on(2)
    schedule = Schedule(0, (1, 2, 3), (Step(0, "start", kill), Step(0, "stop", kill),
                                       Step(0, "heal")))
    cluster = FakeCluster()
    history = History()
    Nemesis(cluster, history).run(schedule)
    assert completions(history) == [
        ("kill-one", "ok", "start"), ("kill-one", "ok", "stop"), ("heal", "ok", "heal")
    ]
    stopped = threading.Event()
    stopped.set()
    history = History()
    Nemesis(cluster, history).run(schedule, stop=stopped)
    assert completions(history) == [("heal", "ok", "heal")]  # nothing ran, still healed
