"""No acknowledged record is lost through a seeded schedule of the newer fault families.

The append workload (workload.py) runs while a seeded schedule of the clock, disk, stress and
membership-change families plays out, each fault once: clock bumps and strobes, the
store crashed with its unsynced writes lost, slow disk IO, a CPU-starved node, a graceful
leave. The cluster runs under the clock layer and on the lazy disk, because this run has
their faults (neither layer is on in a run without them). Then everything is healed and
drained and the checkers judge the history, as in test_durability.py. The seed names the
schedule (`--seed` replays it); the faults it drew are in the history and the page's fault
windows.
"""

from __future__ import annotations

import threading

import pytest

from harness.cluster import UnsupportedFault
from harness.history import History, history_path
from harness.nemesis import Nemesis, each_fault_once, play

from ..membership.bounds import agreement_bound_s
from .test_durability import judge
from .workload import FAST_GOSSIP, Workload

# The newer families' faults, aimed by the schedule's seed. rolling-restart is left to
# test_membership_changes.py: it alone outlasts a whole schedule here.
NEW_FAULTS = [
    "clock-bump-forward",
    "clock-strobe",
    "crash-lose-unsynced",
    "disk-latency",
    "stress-cpu-one",
    "leave-one",
]
# Each fault long enough for the cluster to notice it, each heal long enough to recover.
FAULT_S = (3.0, 6.0)
HEAL_S = (2.0, 4.0)
# What a schedule's last fault may still need to end (a leave waits for the node to be back).
PLAY_GRACE_S = 60.0


@pytest.mark.nemesis
def test_no_acknowledged_record_lost_through_a_schedule_of_new_faults(
    request, cluster_factory, evidence
):
    cluster = cluster_factory(gossip=FAST_GOSSIP, clock_faults=True, disk_faults=True)
    for means in ("clock", "disk"):
        reason = cluster.refusal(means)
        if reason:
            pytest.skip(f"a schedule of the newer faults needs {means}: {reason}")
    ids = [n.id for n in cluster.nodes]
    schedule = each_fault_once(cluster.spec.seed, ids, NEW_FAULTS, fault_s=FAULT_S, heal_s=HEAL_S)
    schedule.validate()
    drawn = sorted({step.fault.name for step in schedule if step.fault is not None})
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        window = agreement_bound_s(cluster.settings, len(cluster.nodes))
        workload = Workload([str(n.client) for n in cluster.nodes], history,
                            duration_s=schedule.duration_s + window + 5.0)
        stop = threading.Event()
        failures: list[BaseException] = []

        def play_schedule() -> None:
            try:
                play(schedule, nemesis, stop=stop)
            except BaseException as exc:  # reported by the test thread below
                failures.append(exc)

        player = threading.Thread(target=play_schedule, name="schedule", daemon=True)

        def end_schedule() -> None:
            player.join(timeout=schedule.duration_s + PLAY_GRACE_S)
            stop.set()
            player.join(timeout=PLAY_GRACE_S)

        try:
            workload.run(start_fault=player.start, stop_fault=end_schedule, heal=nemesis.heal)
        finally:
            stop.set()
            nemesis.teardown()
        for failure in failures:
            if isinstance(failure, UnsupportedFault):
                pytest.skip(str(failure))
            raise failure
        played = {op.f for op in history.snapshot() if op.process == "nemesis"}
        assert set(drawn) <= played, f"drawn {drawn}, played {sorted(played)}"
        judge(history, evidence, workload)
