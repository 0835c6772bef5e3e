"""Membership under clock faults: a node whose wall clock is wrong is still alive.

SWIM's probe timeouts, suspicion timers and gossip rounds are spans of time: a node whose
realtime clock is 30 s ahead, one whose clock strobes, and one whose clock runs fast all
keep answering probes, so every view must keep every node alive: no false death, and the
views converge as the membership checker judges them. The clock faults come from the
nemesis' clock family on a cluster started under the clock layer.
"""

from __future__ import annotations

import time

import pytest

from harness.checkers import membership
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis
from harness.probes import ViewSampler, probe_for

from .bounds import SAMPLE_S, agreement_bound_s, run_backend, timings

MIN_HOLD_S = 8.0  # the skew lasts at least this long, and at least three agreement bounds


@pytest.mark.nemesis
def test_skewed_nodes_stay_members(request, cluster_factory, evidence):
    cluster = cluster_factory(nodes=3, gossip=timings(run_backend(request)), clock_faults=True)
    ids = [node.id for node in cluster.nodes]
    bound_s = agreement_bound_s(cluster.settings, len(ids))
    hold_s = max(MIN_HOLD_S, 3 * bound_s)
    faults = [
        FAULTS["clock-offset-ahead"].on(ids[0]),
        Fault("clock", clock="strobe", attributes={
            "delta_ms": -30_000, "period_ms": 250, "duration_ms": int(hold_s * 1000)}
              ).on(ids[1]),
        FAULTS["clock-rate-fast"].on(ids[2]),
    ]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    probe = probe_for(cluster.settings, ids)
    with History(path) as history, ViewSampler(cluster, history, probe, SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        try:
            time.sleep(1)
            for fault in faults:
                nemesis.invoke(fault, "start")
            time.sleep(hold_s)
            for fault in faults:
                nemesis.invoke(fault, "stop")
            time.sleep(1)
        finally:
            nemesis.teardown()
    ops = history.snapshot()
    deaths = [
        (op.value["observer"], member)
        for op in ops if op.f == "view" and op.type == "ok"
        for member, state in op.value["view"].items() if state == "dead"
    ]
    result = membership.check(history, bound_s=bound_s, nodes=ids)
    evidence.result("membership", result)
    skews = {
        op.f: op.value["clock"] for op in ops
        if op.process == "nemesis" and op.type == "ok" and op.value.get("action") == "start"
    }
    assert not deaths, (
        f"{len(deaths)} views held a node whose clock was wrong (and nothing else) dead, "
        f"e.g. (observer, member) {deaths[:5]}; clocks as measured at the start: {skews}; "
        f"history {path}")
    assert result.valid is True, f"{result.summary()}; bound {bound_s:.2f} s; history {path}"
