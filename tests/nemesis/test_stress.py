"""The stress family on a real local cluster: each fault measured doing what it says.

* stress-cpu: the node's threads wait for their CPU far longer while the hogs run
  (/proc/<pid>/task/*/schedstat run delay), and its affinity is what it was afterwards;
* throttle-cpu: the node's cgroup is held back by its quota (cpu.stat throttled time grows),
  and the node is back in its own cgroup afterwards, ours removed;
* stress-memory: the hogs hold the memory they were asked for;
* recorded with the truth that a stressed node is not down; teardown kills every stress-ng
  we started; bad attributes and a node that is not running are refused in one line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.cluster import Cluster, UnsupportedFault
from harness.debian import ToolMissing, ensure_tools
from harness.history import History
from harness.nemesis import Fault, Nemesis, NemesisError
from harness.nemesis.stress import LocalCgroup, Stress, run_delay_seconds, thread_ids

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(nodes=3, backend="local", target="reference", defects=(),
                        toxiproxy=False),
]

MEASURE_S = 3.0
# Waiting for the CPU: an idle node of a quiet machine waits a few ms per second; under the
# real-time hogs' bursts it waits most of every burst. Both bounds leave a wide margin.
STARVED_DELAY_RATE = 0.2  # seconds of run-queue wait per second, at least, under stress
STARVED_FACTOR = 5.0  # and at least this many times the wait before the stress
THROTTLED_MIN_S = 0.1  # cpu.stat throttled time gained while throttled, at least


@pytest.fixture(scope="module", autouse=True)
def stress_ng() -> None:
    try:
        ensure_tools({"stress-ng": "stress-ng"}, why="the stress fault tests")
    except ToolMissing as exc:
        pytest.skip(str(exc))


def delay_rate(pid: int, seconds: float = MEASURE_S) -> float:
    before, started = run_delay_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (run_delay_seconds(pid) - before) / (time.monotonic() - started)


def hog_pids() -> set[int]:
    """Every stress-ng process on this machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip().startswith("stress-ng"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def family(nemesis: Nemesis) -> Stress:
    found = nemesis.families.family_for("stress-cpu")
    assert isinstance(found, Stress)
    return found


def test_cpu_stress_starves_the_node_and_is_undone(cluster: Cluster, tmp_path: Path):
    pid = cluster.node(1).pid
    assert pid is not None
    if not Path(f"/proc/{pid}/schedstat").exists():
        pytest.skip("this kernel keeps no schedstat (CONFIG_SCHED_INFO): no run delay to read")
    affinity = {tid: os.sched_getaffinity(tid) for tid in thread_ids(pid)}
    others = hog_pids()
    with History(tmp_path / "history.jsonl") as history:
        nemesis = Nemesis(cluster, history)
        instance = Fault("stress-cpu").on(1)
        try:
            before = delay_rate(pid)
            nemesis.invoke(instance, "start")
            ours = hog_pids() - others
            assert ours, "no stress-ng runs while stress-cpu lasts"
            during = delay_rate(pid)
            nemesis.invoke(instance, "stop")
        finally:
            nemesis.teardown()
        ops = [op for op in history.snapshot() if op.process == "nemesis" and op.type == "ok"]
    assert during >= STARVED_DELAY_RATE and during >= STARVED_FACTOR * before, (
        f"node 1 waited {during:.3f} s/s for its CPU under stress-cpu, {before:.3f} s/s before"
    )
    assert not (hog_pids() & ours), "stress-ng still runs after the fault stopped"
    for tid, cpus in affinity.items():
        if Path(f"/proc/{pid}/task/{tid}").exists():
            assert os.sched_getaffinity(tid) == cpus, f"thread {tid} keeps a narrowed affinity"
    starts = [op for op in ops if op.f == "stress-cpu-one" and op.value["action"] == "start"]
    assert starts and starts[0].value["down"] == [] and starts[0].value["nodes"] == [1]


def test_cpu_throttle_holds_the_node_back(cluster: Cluster):
    reason = LocalCgroup.refusal()
    if reason:
        pytest.skip(reason)
    pid = cluster.node(2).pid
    assert pid is not None
    origin = Path(f"/proc/{pid}/cgroup").read_text()
    nemesis = Nemesis(cluster)
    instance = Fault("throttle-cpu", attributes={"quota_percent": 5, "period_ms": 100}).on(2)
    try:
        nemesis.invoke(instance, "start")
        group = family(nemesis).cgroup(2)
        assert group is not None and group.path.is_dir()
        assert str(pid) in (group.path / "cgroup.procs").read_text().split()
        before = group.throttled_s()
        # Work for the node: each DescribeCluster costs it CPU, so the quota bites.
        deadline = time.monotonic() + MEASURE_S
        import grpc
        from google.protobuf.empty_pb2 import Empty
        from HStream.Server import HStreamApi_pb2_grpc

        with grpc.insecure_channel(str(cluster.node(2).direct_client)) as channel:
            stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
            while time.monotonic() < deadline:
                stub.DescribeCluster(Empty(), timeout=5)
        gained = group.throttled_s() - before
        nemesis.invoke(instance, "stop")
    finally:
        nemesis.teardown()
    assert gained >= THROTTLED_MIN_S, f"the quota held node 2 back only {gained:.3f} s"
    assert not group.path.exists(), f"{group.path} left behind"
    assert Path(f"/proc/{pid}/cgroup").read_text() == origin, "node 2 not back in its cgroup"


def test_memory_stress_holds_its_memory(cluster: Cluster):
    megabytes = 128
    others = hog_pids()
    nemesis = Nemesis(cluster)
    try:
        nemesis.invoke(Fault("stress-memory", attributes={"megabytes": megabytes}).on(3))
        held = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = 0
            for hog in hog_pids() - others:
                for line in Path(f"/proc/{hog}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        held = max(held, int(line.split()[1]) // 1024)
            if held >= megabytes * 0.8:
                break
            time.sleep(0.2)
    finally:
        nemesis.teardown()
    assert held >= megabytes * 0.8, f"the memory hog holds {held} MB of {megabytes}"
    assert not (hog_pids() - others), "teardown left stress-ng running"


def test_teardown_heals_every_stress_and_bad_input_is_refused(cluster: Cluster):
    others = hog_pids()
    nemesis = Nemesis(cluster)
    with pytest.raises(NemesisError, match="stress-cpu load is a percentage"):
        nemesis.invoke(Fault("stress-cpu", attributes={"load": 150}).on(1))
    try:
        nemesis.invoke(Fault("stress-cpu").on(1))
        nemesis.invoke(Fault("stress-memory", attributes={"megabytes": 32}).on(2))
        assert hog_pids() - others
    finally:
        nemesis.teardown()
    assert not (hog_pids() - others), "teardown left stress-ng running"
    nemesis = Nemesis(cluster)
    try:
        nemesis.invoke(Fault("kill").on(3))
        with pytest.raises(UnsupportedFault, match="node 3 is killed, not running"):
            nemesis.invoke(Fault("stress-cpu").on(3))
    finally:
        nemesis.teardown()


def test_a_cgroup_left_by_a_killed_run_is_swept(cluster: Cluster):
    reason = LocalCgroup.refusal()
    if reason:
        pytest.skip(reason)
    from harness.nemesis.stress import CGROUP_PREFIX, _v1_cpu, _v2_cpu

    root = _v2_cpu() or _v1_cpu()
    assert root is not None
    stale = root / f"{CGROUP_PREFIX}killed-run-node-1"
    stale.mkdir()
    try:
        nemesis = Nemesis(cluster)
        try:
            nemesis.invoke(Fault("throttle-cpu").on(1))  # making a cgroup sweeps first
        finally:
            nemesis.teardown()
        assert not stale.exists(), f"{stale} was not swept"
    finally:
        if stale.exists():
            stale.rmdir()
