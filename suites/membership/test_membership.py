"""Membership under faults: bootstrap, kill, pause, partitions and latency, for N = 3 and 5.

Views are sampled from every running node (harness.probes) into a history, together with the
nemesis' faults; the membership checker judges them against a bound derived from the
gossip settings:

    T  = probe interval, G = gossip interval, n = nodes
    expected first detection   ≈ e/(e−1)·T        (each period a failed member escapes all
                                                    n−1 probers with probability ≈ 1/e)
    detection bound            = min(7, 2n−1)·T    (missing 7 periods in a row: p ≈ e^−7;
                                                    shuffled round-robin: ≤ 2n−1 periods)
    suspicion timeout          = mult·max(1, log10 n)·T         (Lifeguard/memberlist)
    dissemination              = retransmit·ceil(ln(n+2))·G     (O(log n) gossip rounds)
    agreement bound            = detection + suspicion + dissemination + one sample

so a failure is seen, confirmed and agreed on by every survivor within the bound, or the
suite fails with the measured times. A brand-new node has nothing to detect: it gets the
member list from the seed that accepts its join, and the seed's Alive(new node) spreads by
gossip, so

    join bound                 = dissemination(n+1) + T + one sample

(the T covers the new node's first round of pings, which announce it directly). The same
suites run against any target whose views a probe can read.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.checkers import membership
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis
from harness.probes import CliClusterProbe, DescribeClusterProbe, ViewSampler

PROBE_MS = 300
RTT_MS = 120
GOSSIP_MS = 150
SUSPICION_MULT = 3
RETRANSMIT_MULT = 4
SAMPLE_S = 0.1
TIMINGS = {
    "probe_interval_ms": PROBE_MS,
    "roundtrip_timeout_ms": RTT_MS,
    "gossip_interval_ms": GOSSIP_MS,
    "suspicion_mult": SUSPICION_MULT,
    "retransmit_mult": RETRANSMIT_MULT,
    "reconnect_interval_ms": 1000,
}


def agreement_bound_s(n: int) -> float:
    """The agreement bound of the module docstring, for these timings."""
    suspicion_periods = SUSPICION_MULT * max(1.0, math.log10(n))
    bounds = membership.swim_bounds(
        PROBE_MS / 1000,
        n,
        gossip_interval_s=GOSSIP_MS / 1000,
        retransmit_mult=RETRANSMIT_MULT,
        suspicion_periods=suspicion_periods,
        sample_interval_s=SAMPLE_S,
    )
    return bounds["agreement_bound_s"]


@dataclass
class Observed:
    cluster: object
    history: History
    nemesis: Nemesis
    bound_s: float


@pytest.fixture(params=[3, 5], ids=["n3", "n5"])
def observed(request, cluster_factory, evidence) -> Iterator[Observed]:
    n = request.param
    cluster = cluster_factory(nodes=n, gossip=TIMINGS)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history, ViewSampler(cluster, history, CliClusterProbe(), SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        try:
            yield Observed(cluster, history, nemesis, agreement_bound_s(n))
        finally:
            nemesis.teardown()


def settle(history: History, cluster, within_s: float) -> None:
    """Wait (event-driven, at most `within_s`) until every node's latest view has every
    node alive: the truth once everything is healed, as at the end of every test here.

    The history then ends at a moment of agreement instead of at an arbitrary instant,
    which on a loaded machine can fall inside a short refuted suspicion and leave the
    last epoch undecided. A disagreement that outlasts the bound still ends the history
    disagreeing, and the checker fails it as not converged.
    """
    ids = {str(node.id) for node in cluster.nodes}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        latest: dict[str, dict[str, str]] = {}
        for op in reversed(history.snapshot()):
            if op.f == "view" and op.value["observer"] not in latest:
                latest[op.value["observer"]] = op.value["view"]
                if len(latest) == len(ids):
                    break
        if set(latest) == ids and all(
            all(view.get(m) == "alive" for m in ids) for view in latest.values()
        ):
            return
        time.sleep(SAMPLE_S)


def join_bound_s(n: int) -> float:
    """The join bound of the module docstring: n nodes running, one joining."""
    bounds = membership.swim_bounds(
        PROBE_MS / 1000,
        n + 1,
        gossip_interval_s=GOSSIP_MS / 1000,
        retransmit_mult=RETRANSMIT_MULT,
        sample_interval_s=SAMPLE_S,
    )
    return round(bounds["dissemination_bound_s"] + PROBE_MS / 1000 + SAMPLE_S, 3)


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
        f"{result.summary()}; bound {observed.bound_s:.2f} s; measured {figures}; "
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
    cluster = cluster_factory(nodes=n, late_nodes=1, gossip=TIMINGS)
    newcomer = n + 1
    path = history_path(request.node.nodeid)
    evidence.history(path)
    observed = None
    with History(path) as history, ViewSampler(cluster, history, CliClusterProbe(), SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        observed = Observed(cluster, history, nemesis, join_bound_s(n))
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
    latency = RTT_MS // 3
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
        f"{latency} ms of gossip latency on node {list(instance.nodes)} (timeout {RTT_MS} ms) "
        "caused suspicions: " + verdict(result, observed)
    )


@pytest.mark.nemesis
def test_describe_cluster_follows_a_failure(request, cluster_factory, evidence):
    """The client-facing view (DescribeCluster) follows a kill -9 and the restart too.

    HServer drops suspected members from both DescribeCluster lists, so the probe is given
    the cluster's node ids and reports a known member in neither list as suspect.
    """
    n = 3
    cluster = cluster_factory(nodes=n, gossip=TIMINGS)
    ids = [node.id for node in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    probe = DescribeClusterProbe(nodes=ids)
    with History(path) as history, ViewSampler(cluster, history, probe, SAMPLE_S):
        nemesis = Nemesis(cluster, history)
        observed = Observed(cluster, history, nemesis, agreement_bound_s(n))
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
    result = judge(observed, evidence, absent="suspect")
    assert result.valid is True, verdict(result, observed)
    downs = [ep for ep in result.figures["episodes"] if ep["event"] == "down"]
    assert downs and all(ep["confirmed_dead_s"] is not None for ep in downs), (
        f"DescribeCluster never listed node {instance.nodes} as dead on every survivor: "
        f"{downs}; history {path}"
    )
