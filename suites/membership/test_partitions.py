"""Partitions by grudge (iptables inside containers): each side's view, then reconvergence.

Needs a runtime that can cut links (docker, ssh): a local run starts these clusters in
containers, since processes on one machine cannot be cut off from one another honestly.
"""

from __future__ import annotations

import random
import time

import pytest

from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis
from harness.probes import ViewSampler, probe_for

from .bounds import SAMPLE_S, TIMINGS, agreement_bound_s
from .test_membership import settle

pytestmark = pytest.mark.docker


def last_views(history: History) -> dict[str, dict[str, str]]:
    views: dict[str, dict[str, str]] = {}
    for op in history:
        if op.f == "view":
            views[op.value["observer"]] = op.value["view"]
    return views


@pytest.mark.nemesis
@pytest.mark.parametrize("grudge", ["partition-halves", "partition-isolate-one"])
@pytest.mark.parametrize("n", [3, 5], ids=["n3", "n5"])
def test_partition_then_heal(request, cluster_factory, cluster_spec, evidence, grudge, n):
    from harness.checkers import membership

    # Processes on one machine share proxies that cannot cut one peer off and not another:
    # that run's partitions go to containers; a runtime with real hosts keeps its own.
    backend = "docker" if cluster_spec.backend == "local" else cluster_spec.backend
    cluster = cluster_factory(nodes=n, gossip=TIMINGS, backend=backend)
    bound = agreement_bound_s(cluster.settings, n)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        probe = probe_for(cluster.settings, [x.id for x in cluster.nodes])
        with ViewSampler(cluster, history, probe, SAMPLE_S):
            try:
                instance = FAULTS[grudge].resolve(
                    [x.id for x in cluster.nodes], random.Random(cluster.spec.seed)
                )
                time.sleep(1)
                nemesis.invoke(instance, "start")
                time.sleep(bound + 1)
                during = last_views(history)
                nemesis.heal()
                time.sleep(bound + 2)
                settle(history, cluster, bound)
            finally:
                nemesis.teardown()
        cut_off = {str(x) for x in instance.down}
        majority = {str(x.id) for x in cluster.nodes} - cut_off
        for observer in majority:
            seen = during.get(observer, {})
            wrongly_alive = [m for m in cut_off if seen.get(m, "dead") == "alive"]
            assert not wrongly_alive, (
                f"during {grudge}, node {observer} still saw {wrongly_alive} alive: {seen}; "
                f"history {path}"
            )
        for observer in cut_off:
            seen = during.get(observer, {})
            wrongly_alive = [m for m in majority if seen.get(m, "dead") == "alive"]
            assert not wrongly_alive, (
                f"during {grudge}, cut-off node {observer} still saw {wrongly_alive} alive"
            )
        result = membership.check(history, bound_s=bound, nodes=[x.id for x in cluster.nodes])
        evidence.result("membership", result)
        assert result.valid is True, f"{result.summary()}; bound {bound:.2f} s; history {path}"
