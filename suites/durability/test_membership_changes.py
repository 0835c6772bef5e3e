"""No acknowledged record is lost while the membership changes under an append workload.

The workload (workload.py) appends and consumes while the cluster's membership changes:
every node restarted in turn (a rolling restart: each gracefully stopped, started, and back
in every view before the next), a node leaving gracefully (and started again), or a
brand-new node joining -- drawn, as a schedule would draw it, from the fault catalogue
(`FAULTS["join"]` starts the next late node). Then everything is healed and drained and the
checkers judge the history, as in test_durability.py.
"""

from __future__ import annotations

import random

import pytest

from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis, Schedule, Step

from ..membership.bounds import agreement_bound_s
from .test_durability import judge
from .workload import FAST_GOSSIP, Workload

# How long a node that is restarted in a rolling restart may take to be back in every view
# (the family's named deadline; a few join bounds at FAST_GOSSIP).
REJOIN_DEADLINE_S = 20


@pytest.mark.nemesis
@pytest.mark.parametrize("change", ["rolling-restart", "leave-one", "join"])
def test_no_acknowledged_record_lost_through_membership_change(
    request, cluster_factory, evidence, change
):
    late = 1 if change == "join" else 0
    cluster = cluster_factory(gossip=FAST_GOSSIP, late_nodes=late)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    running = [n.id for n in cluster.nodes if n.state == "running"]
    fault = FAULTS[change]
    if change == "rolling-restart":
        fault = Fault("rolling-restart", target="all",
                      attributes={"rejoin_deadline_s": REJOIN_DEADLINE_S})
    instance = fault.resolve(running, random.Random(cluster.spec.seed))
    # Played as a schedule, the way a chaos run draws it: start, stop, heal.
    schedule = Schedule(
        seed=cluster.spec.seed,
        nodes=tuple(running),
        steps=(Step(None, "start", instance), Step(None, "stop", instance), Step(None, "heal")),
    )
    schedule.validate()
    start, stop, heal = schedule.steps
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        window = agreement_bound_s(cluster.settings, len(cluster.nodes))
        # A rolling restart's start returns once the last node is back, so the workload runs
        # through all of it and on for the rest of its duration.
        workload = Workload([str(cluster.node(n).client) for n in running], history,
                            duration_s=max(10.0, 2.0 + window + 5.0))
        try:
            workload.run(
                start_fault=lambda: nemesis.invoke(start.fault, start.action),
                stop_fault=lambda: nemesis.invoke(stop.fault, stop.action),
                heal=nemesis.heal,
            )
        finally:
            nemesis.teardown()
        changes = [op for op in history.snapshot()
                   if op.process == "nemesis" and op.type == "ok" and op.f == instance.name]
        judge(history, evidence, workload)
    went_down = sorted({n for op in changes for n in op.value["down"]})
    came_up = sorted({n for op in changes for n in op.value["up"]})
    if change == "rolling-restart":
        assert went_down == came_up == running, changes
    elif change == "leave-one":
        assert went_down == came_up == list(instance.nodes), changes
    else:
        assert went_down == [] and came_up == [max(n.id for n in cluster.nodes)], changes
