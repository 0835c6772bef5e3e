"""Membership under faults: bootstrap, kill, pause, latency and joins, for N = 3 and 5.

Views are sampled from every running node through the probe the target supports
(CliCluster, or DescribeCluster read as its member lists mean it) into a history, together
with the nemesis' faults; the membership checker judges them against bounds derived from
what the target reports it runs with (suites/membership/bounds.py states the formulas), so
a failure is seen, confirmed and agreed on by every survivor within the bound, or the suite
fails with the measured times. The same suites run against any target whose views a probe
can read.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.checkers import membership
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis
from harness.probes import DescribeClusterProbe, ViewSampler, probe_for

from .bounds import SAMPLE_S, agreement_bound_s, join_bound_s, run_backend, timings


@dataclass
class Observed:
    cluster: object
    history: History
    nemesis: Nemesis
    bound_s: float


@contextlib.contextmanager
def observe(request, cluster_factory, evidence, n: int, **options) -> Iterator[Observed]:
    """An n-node cluster at the suite's timings (and `options` for the cluster factory), its
    views sampled into the test's history and a nemesis on it, healed at the end: what every
    membership test here watches."""
    backend = options.get("backend") or run_backend(request)
    cluster = cluster_factory(nodes=n, gossip=timings(backend), **options)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    probe = probe_for(cluster.settings, [node.id for node in cluster.nodes])
    with History(path) as history, ViewSampler(cluster, history, probe, SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        try:
            yield Observed(cluster, history, nemesis, agreement_bound_s(cluster.settings, n))
        finally:
            nemesis.teardown()


@pytest.fixture(params=[3, 5], ids=["n3", "n5"])
def observed(request, cluster_factory, evidence) -> Iterator[Observed]:
    with observe(request, cluster_factory, evidence, request.param) as watched:
        yield watched


def settle(history: History, cluster, within_s: float, after: int = 0) -> None:
    """Wait (event-driven, at most `within_s`) until every node's latest view has every
    node alive: the truth once everything is healed, as at the end of every test here.

    The history then ends at a moment of agreement instead of at an arbitrary instant,
    which on a loaded machine can fall inside a short refuted suspicion and leave the
    last epoch undecided. A disagreement that outlasts the bound still ends the history
    disagreeing, and the checker fails it as not converged. `after`: only views taken after
    that many history ops count (those of a fault's aftermath, not the ones before it).
    """
    ids = {str(node.id) for node in cluster.nodes}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        latest: dict[str, dict[str, str]] = {}
        for op in reversed(history.snapshot()[after:]):
            if op.f == "view" and op.value["observer"] not in latest:
                latest[op.value["observer"]] = op.value["view"]
                if len(latest) == len(ids):
                    break
        if set(latest) == ids and all(
            all(view.get(m) == "alive" for m in ids) for view in latest.values()
        ):
            return
        time.sleep(SAMPLE_S)


def judge(observed: Observed, evidence, **options) -> membership.Result:
    settle(observed.history, observed.cluster, observed.bound_s)
    ids = [node.id for node in observed.cluster.nodes]
    result = membership.check(observed.history, bound_s=observed.bound_s, nodes=ids, **options)
    evidence.result("membership", result)
    return result


def wait(seconds: float) -> None:
    time.sleep(seconds)


def verdict(result, observed: Observed) -> str:
    figures = {
        k: result.figures.get(k)
        for k in ("time_to_first_suspicion_s", "time_to_confirmed_dead_s", "time_to_agreement_s")
    }
    return (
        f"{result.summary()}; bound {observed.bound_s:.2f} s "
        f"({observed.cluster.settings.label}); measured {figures}; "
        f"history {observed.history.path}"
    )


def test_bootstrap_converges(observed, evidence):
    """A fresh cluster: every node sees every node alive, and keeps doing so."""
    wait(3)
    result = judge(observed, evidence, false_suspicions_fail=True)
    assert result.valid is True, verdict(result, observed)
    assert result.counts["views"] > 0


@pytest.mark.nemesis
@pytest.mark.parametrize("n", [3, 5], ids=["n3", "n5"])
def test_new_node_joins_within_bound(request, cluster_factory, evidence, n):
    """A brand-new node (an id no member has seen) started against the running cluster's
    seeds: within the join bound every node, the newcomer included, sees all n+1 alive,
    with no suspicion of anyone on the way."""
    cluster = cluster_factory(nodes=n, late_nodes=1, gossip=timings(run_backend(request)))
    newcomer = n + 1
    path = history_path(request.node.nodeid)
    evidence.history(path)
    observed = None
    probe = probe_for(cluster.settings, [node.id for node in cluster.nodes])
    with History(path) as history, ViewSampler(cluster, history, probe, SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        observed = Observed(cluster, history, nemesis, join_bound_s(cluster.settings, n))
        try:
            wait(1)
            nemesis.join(newcomer)
            wait(observed.bound_s + 1)
        finally:
            nemesis.teardown()
        settle(history, cluster, observed.bound_s)
    result = judge(observed, evidence, false_suspicions_fail=True)
    assert result.valid is True, verdict(result, observed)
    joins = [ep for ep in result.figures["episodes"] if ep["event"] == "join"]
    assert [ep["node"] for ep in joins] == [str(newcomer)], verdict(result, observed)
    after_join = result.figures["epochs"][-1]
    assert after_join["down"] == [] and after_join["observers"] == n + 1, after_join
    assert after_join["agreement_s"] is not None, verdict(result, observed)


@pytest.mark.nemesis
@pytest.mark.parametrize("fault", ["kill-one", "pause-one"])
def test_failure_detected_within_bound(observed, evidence, fault):
    """kill -9 or SIGSTOP one node: survivors suspect it, confirm it dead and agree within
    the bound; brought back (restart / SIGCONT), it rejoins or refutes and all views return
    to the full set within the bound again."""
    rng = random.Random(observed.cluster.spec.seed)
    instance = FAULTS[fault].resolve([n.id for n in observed.cluster.nodes], rng)
    wait(1)
    observed.nemesis.invoke(instance, "start")
    wait(observed.bound_s + 1)
    observed.nemesis.invoke(instance, "stop")
    wait(observed.bound_s + 1)
    result = judge(observed, evidence)
    assert result.valid is True, verdict(result, observed)
    downs = [ep for ep in result.figures["episodes"] if ep["event"] == "down"]
    assert downs and all(ep["confirmed_dead_s"] is not None for ep in downs), (
        f"node {instance.nodes} was never confirmed dead by every survivor: {downs}; "
        f"history {observed.history.path}"
    )


@pytest.mark.nemesis
def test_latency_below_roundtrip_timeout_is_no_suspicion(observed, evidence):
    """Gossip latency at a third of the round-trip timeout must not make anyone suspect."""
    rtt_ms = round(observed.cluster.settings.gossip.roundtrip_timeout_s * 1000)
    latency = rtt_ms // 3
    slow_gossip = Fault(
        "toxic", link="gossip", toxic="latency", attributes={"latency": latency, "jitter": 5}
    )
    instance = slow_gossip.resolve([n.id for n in observed.cluster.nodes], random.Random(1))
    observed.nemesis.invoke(instance, "start")
    try:
        wait(max(5.0, observed.bound_s))
    finally:
        observed.nemesis.invoke(instance, "stop")
    result = judge(observed, evidence, false_suspicions_fail=True)
    assert result.valid is True and result.counts.get("false_suspicion", 0) == 0, (
        f"{latency} ms of gossip latency on node {list(instance.nodes)} (timeout {rtt_ms} ms) "
        "caused suspicions: " + verdict(result, observed)
    )


@pytest.mark.nemesis
def test_describe_cluster_follows_a_failure(request, cluster_factory, evidence):
    """The client-facing view (DescribeCluster) follows a kill -9 and the restart too.

    The probe is given the cluster's node ids: a known member in neither list is a
    suspect where lists hold every state, and not alive at all where they hold alive
    members only (real HStreamDB).
    """
    n = 3
    cluster = cluster_factory(nodes=n, gossip=timings(run_backend(request)))
    ids = [node.id for node in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    absent = "dead" if cluster.settings.member_lists == "alive-only" else "suspect"
    probe = DescribeClusterProbe(nodes=ids, absent=absent)
    with History(path) as history, ViewSampler(cluster, history, probe, SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        observed = Observed(cluster, history, nemesis, agreement_bound_s(cluster.settings, n))
        try:
            instance = FAULTS["kill-one"].resolve(ids, random.Random(cluster.spec.seed))
            wait(1)
            nemesis.invoke(instance, "start")
            wait(observed.bound_s + 1)
            nemesis.invoke(instance, "stop")
            wait(observed.bound_s + 1)
        finally:
            nemesis.teardown()
        settle(history, cluster, observed.bound_s)
    result = judge(observed, evidence, absent=absent)
    assert result.valid is True, verdict(result, observed)
    downs = [ep for ep in result.figures["episodes"] if ep["event"] == "down"]
    assert downs and all(ep["confirmed_dead_s"] is not None for ep in downs), (
        f"DescribeCluster never listed node {instance.nodes} as dead on every survivor: "
        f"{downs}; history {path}"
    )
