"""The membership suites' bounds, from what the target reports it runs with.

    T  = probe interval, G = gossip interval, n = nodes (all from `cluster.settings`)
    expected first detection   ≈ e/(e−1)·T        (each period a failed member escapes all
                                                    n−1 probers with probability ≈ 1/e)
    detection bound            = min(7, 2n−1)·T    (missing 7 periods in a row: p ≈ e^−7;
                                                    shuffled round-robin: ≤ 2n−1 periods)
    confirmation               = mult·max(1, log10 n)·T   with a suspicion timer
                                                    (Lifeguard/memberlist), or T where the
                                                    prober confirms itself (HStreamDB v0.20)
    dissemination              = retransmit·ceil(ln(n+2))·G     (O(log n) gossip rounds)
    agreement bound            = detection + confirmation + dissemination + one sample

After a partition heals, each side holds the other confirmed dead and nobody probes the
dead: they come back only through the target's reconnect path (R = reconnect interval,
a = reconnect attempts until every cut-off member is re-admitted, at worst: 1 where an
attempt tries every dead member, one per cut-off member where it tries one at random, as
HStreamDB v0.20 does), then a probe round tells each side the other refuted:

    heal bound                 = a·(R + round trip) + detection + dissemination + one sample

A brand-new node has nothing to detect: it gets the member list from the seed that accepts
its join, and the seed's Alive(new node) spreads by gossip, so

    join bound                 = dissemination(n+1) + T + one sample

(the T covers the new node's first round of pings, which announce it directly).

Targets that take timings from outside (the reference server) run with `timings(backend)`,
fast enough that a test takes seconds; the others run their own (harness.plugin drops the
request) and every bound follows.
"""

from __future__ import annotations

from harness.checkers import membership
from harness.targets.settings import TargetSettings

SAMPLE_S = 0.1
TIMINGS = {
    "probe_interval_ms": 300,
    "roundtrip_timeout_ms": 120,
    "gossip_interval_ms": 150,
    "suspicion_mult": 3,
    "retransmit_mult": 4,
    "reconnect_interval_ms": 1000,
}
# On the docker backend every gossip message crosses the Toxiproxy container, and a node
# shares the cores with every worker's containers, some of them starting (seconds of CPU
# each). There a live node's ack outlasted the 120 ms roundtrip twice in runs of 6 workers
# on 2 cores, each time while another container started, and the tests that allow no false
# suspicion failed (a join and a graceful leave). The periods and the roundtrip are doubled
# there: still 3 to 7 times faster than HStreamDB's defaults (probe 2 s, roundtrip 500 ms,
# gossip 1 s: hstream-gossip/src/HStream/Gossip/Types.hs, defaultGossipOpts). Every bound
# follows from the cluster's settings, so the verdicts stay exact.
DOCKER_STRETCH = 2
_PERIODS = ("probe_interval_ms", "roundtrip_timeout_ms", "gossip_interval_ms")


def timings(backend: str) -> dict[str, int]:
    """The suite's gossip timings for a cluster on `backend` (see DOCKER_STRETCH)."""
    if backend != "docker":
        return dict(TIMINGS)
    return {k: v * DOCKER_STRETCH if k in _PERIODS else v for k, v in TIMINGS.items()}


def run_backend(request) -> str:  # type: ignore[no-untyped-def]
    """The backend a test's factory clusters start on unless it names one."""
    return str(request.getfixturevalue("cluster_spec").backend)


def agreement_bound_s(settings: TargetSettings, n: int) -> float:
    gossip = settings.gossip
    bounds = membership.swim_bounds(
        gossip.probe_interval_s,
        n,
        gossip_interval_s=gossip.gossip_interval_s,
        retransmit_mult=gossip.retransmit_mult,
        suspicion_periods=gossip.suspicion_periods(n),
        sample_interval_s=SAMPLE_S,
    )
    return bounds["agreement_bound_s"]


def heal_bound_s(settings: TargetSettings, n: int, cut_off: int) -> float:
    """n nodes, `cut_off` of them on the other side of a partition that just healed."""
    gossip = settings.gossip
    bounds = membership.swim_bounds(
        gossip.probe_interval_s,
        n,
        gossip_interval_s=gossip.gossip_interval_s,
        retransmit_mult=gossip.retransmit_mult,
        sample_interval_s=SAMPLE_S,
    )
    attempts = gossip.reconnect_attempts(cut_off)
    reconnect = attempts * (gossip.reconnect_interval_s + gossip.roundtrip_timeout_s)
    return round(
        reconnect + bounds["detection_bound_s"] + bounds["dissemination_bound_s"] + SAMPLE_S, 3
    )


def join_bound_s(settings: TargetSettings, n: int) -> float:
    """n nodes running, one joining."""
    gossip = settings.gossip
    bounds = membership.swim_bounds(
        gossip.probe_interval_s,
        n + 1,
        gossip_interval_s=gossip.gossip_interval_s,
        retransmit_mult=gossip.retransmit_mult,
        sample_interval_s=SAMPLE_S,
    )
    return round(bounds["dissemination_bound_s"] + gossip.probe_interval_s + SAMPLE_S, 3)
