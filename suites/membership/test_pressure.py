"""Membership under resource pressure: a node starved of CPU is slow, not dead.

One node is CPU-starved (stress-ng hogs pinned to its CPU, or its cgroup throttled) while
every node's view is sampled. A starved node answers late and handles answers late, so
correct SWIM may suspect it, or it may time out a ping of a live peer, but the second
opinions (PingReq through members whose loops ran), the suspicion timer and the refutation
keep every live member alive: no observer may ever see a live member dead, and the views
converge within the bound (suites/membership/bounds.py). A false suspicion (suspect, then
refuted) is allowed; a false death is the anomaly.

The control, `test_no_false_death_when_a_peer_fails`, checks the same property under the
faults we had before (kill -9 or SIGSTOP of one node): a prober that takes its own timeout
for a member's death passes it, since a killed or paused node really is gone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from harness.checkers import membership
from harness.cluster import UnsupportedFault
from harness.nemesis import FAULTS

from .test_membership import Observed, observe, settle, verdict, wait

# Long enough for every node to probe the starved one, and be probed by it, many times
# over (a probe period is 0.3 s at the suite's timings, 0.6 s on docker); longer on targets
# with slower timings.
PRESSURE_S = 8.0


@pytest.fixture
def observed(request, cluster_factory, evidence) -> Iterator[Observed]:
    with observe(request, cluster_factory, evidence, 3) as watched:
        yield watched


def false_deaths(result: membership.Result) -> list[dict]:
    """False suspicions in which the live member was seen dead, not merely suspect (a member
    missing from a view is dead to the checker, as judged here)."""
    return [
        found
        for found in result.anomalies.get("false_suspicion", [])
        if found["state"] == "absent" or membership.normalise_state(found["state"]) == "dead"
    ]


def judge_deaths(observed: Observed, evidence) -> tuple[membership.Result, list[dict]]:
    settle(observed.history, observed.cluster, observed.bound_s)
    ids = [node.id for node in observed.cluster.nodes]
    result = membership.check(observed.history, bound_s=observed.bound_s, nodes=ids)
    deaths = false_deaths(result)
    result.counts["false_death"] = len(deaths)
    result.anomalies["false_death"] = deaths[:10]
    evidence.result("membership", result)
    return result, deaths


def hurt(observed: Observed, fault: str, hold_s: float):
    ids = [n.id for n in observed.cluster.nodes]
    instance = FAULTS[fault].resolve(ids, random.Random(observed.cluster.spec.seed))
    wait(1)
    try:
        observed.nemesis.invoke(instance, "start")
    except UnsupportedFault as exc:
        pytest.skip(str(exc))
    wait(hold_s)
    observed.nemesis.invoke(instance, "stop")
    wait(observed.bound_s + 1)
    return instance


def deaths_message(deaths: list[dict], instance, result, observed: Observed) -> str:
    seen = "; ".join(
        f"node {d['observer']} saw live node {d['member']} {d['state']} at {d['at_s']:.2f} s"
        for d in deaths[:5]
    )
    return (f"false_death: {len(deaths)} times a live member was seen dead while "
            f"{instance.name} hit node {list(instance.nodes)} ({seen}); "
            + verdict(result, observed))


@pytest.mark.nemesis
@pytest.mark.parametrize("fault", ["stress-cpu-one", "throttle-cpu-one"])
def test_no_false_death_under_pressure(observed, evidence, fault):
    """One node starved of CPU for PRESSURE_S: no live member is ever seen dead, and every
    view converges within the bound."""
    instance = hurt(observed, fault, max(PRESSURE_S, observed.bound_s))
    result, deaths = judge_deaths(observed, evidence)
    assert not deaths, deaths_message(deaths, instance, result, observed)
    assert result.valid is True, verdict(result, observed)


@pytest.mark.nemesis
@pytest.mark.parametrize("fault", ["kill-one", "pause-one"])
def test_no_false_death_when_a_peer_fails(observed, evidence, fault):
    """The same property under the faults we had: one node killed (or paused) and brought
    back; the others see it dead, but no live member is ever seen dead."""
    instance = hurt(observed, fault, observed.bound_s + 1)
    result, deaths = judge_deaths(observed, evidence)
    assert not deaths, deaths_message(deaths, instance, result, observed)
    assert result.valid is True, verdict(result, observed)
