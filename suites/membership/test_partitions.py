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

from .bounds import SAMPLE_S, agreement_bound_s, heal_bound_s, timings
from .test_membership import settle

pytestmark = pytest.mark.docker


def last_views(history: History) -> dict[str, dict[str, str]]:
    views: dict[str, dict[str, str]] = {}
    for op in history.snapshot():
        if op.f == "view":
            views[op.value["observer"]] = op.value["view"]
    return views


def seen_across(views: dict[str, dict[str, str]], sides: list[set[str]],
                states: tuple[str, ...]) -> dict[str, list]:
    """observer -> members of another side it sees in one of `states` (absent is dead); an
    observer with no view yet is listed too, with nothing."""
    wrong = {}
    for side in sides:
        others = set().union(*sides) - side
        for observer in side:
            seen = views.get(observer, {})
            found = sorted(m for m in others if seen.get(m, "dead") in states)
            if found or observer not in views:
                wrong[observer] = found
    return wrong


def wrongly_alive(views: dict[str, dict[str, str]], sides: list[set[str]]) -> dict[str, list]:
    """observer -> members of another side it still sees alive."""
    return seen_across(views, sides, ("alive",))


def wait_for_split(history: History, sides: list[set[str]], within_s: float) -> None:
    """Until every observer holds the other side dead (confirmed, not merely suspected: a
    heal before the confirmation would test a refuted suspicion, not a rejoin), or
    `within_s` has passed (the assertions then show who still saw whom)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and seen_across(
        last_views(history), sides, ("alive", "suspect")
    ):
        time.sleep(SAMPLE_S)


@pytest.mark.nemesis
@pytest.mark.parametrize("grudge", ["partition-halves", "partition-isolate-one"])
@pytest.mark.parametrize("n", [3, 5], ids=["n3", "n5"])
def test_partition_then_heal(request, cluster_factory, cluster_spec, evidence, grudge, n):
    from harness.checkers import membership

    # Processes on one machine share proxies that cannot cut one peer off and not another:
    # that run's partitions go to containers; a runtime with real hosts keeps its own.
    backend = "docker" if cluster_spec.backend == "local" else cluster_spec.backend
    cluster = cluster_factory(nodes=n, gossip=timings(backend), backend=backend)
    bound = agreement_bound_s(cluster.settings, n)
    ids = [x.id for x in cluster.nodes]
    instance = FAULTS[grudge].resolve(ids, random.Random(cluster.spec.seed))
    cut_off = {str(x) for x in instance.down}
    majority = {str(x) for x in ids} - cut_off
    # Members confirmed dead come back through the reconnect path, not by detection.
    heal_bound = heal_bound_s(cluster.settings, n, len(cut_off))
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        probe = probe_for(cluster.settings, ids)
        with ViewSampler(cluster, history, probe, SAMPLE_S):
            try:
                settle(history, cluster, bound)
                nemesis.invoke(instance, "start")
                wait_for_split(history, [majority, cut_off], bound + 1)
                during = last_views(history)
                nemesis.heal()
                settle(history, cluster, heal_bound + 2, after=len(history.snapshot()))
            finally:
                nemesis.teardown()
        wrong = wrongly_alive(during, [majority, cut_off])
        assert not wrong, (
            f"during {grudge} (cut off: {sorted(cut_off)}), these observers still saw members "
            f"of the other side alive after {bound + 1:.1f} s: {wrong}; history {path}"
        )
        result = membership.check(history, bound_s=bound, up_bound_s=heal_bound, nodes=ids)
        evidence.result("membership", result)
        assert result.valid is True, (
            f"{result.summary()}; bound {bound:.2f} s, after the heal {heal_bound:.2f} s "
            f"({cluster.settings.gossip.reconnect} reconnect every "
            f"{cluster.settings.gossip.reconnect_interval_s:g} s); history {path}"
        )
