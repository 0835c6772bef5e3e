"""Membership converges through a seeded schedule of the newer fault families.

Skewed, jumping, strobing and fast wall clocks, a CPU-starved node and a graceful leave, each
once in an order the seed draws (`harness.nemesis.each_fault_once`), on a cluster under the
clock layer (on only because this run has clock faults). Only the leave takes a node down;
every other fault must leave every member alive in every view. The membership checker judges
the views against the truth and the bounds the target reports, as everywhere in this suite.
"""

from __future__ import annotations

import pytest

from harness.cluster import UnsupportedFault
from harness.nemesis import each_fault_once, play

from .test_membership import Observed, judge, observe, verdict

NEW_FAULTS = [
    "clock-bump-back",
    "clock-strobe",
    "clock-rate-fast",
    "stress-cpu-one",
    "leave-one",
]
FAULT_S = (3.0, 5.0)
HEAL_S = (2.0, 3.0)


@pytest.fixture
def observed(request, cluster_factory, evidence):
    with observe(request, cluster_factory, evidence, 3, clock_faults=True) as watched:
        yield watched


@pytest.mark.nemesis
def test_views_converge_through_a_schedule_of_new_faults(observed: Observed, evidence):
    reason = observed.cluster.refusal("clock")
    if reason:
        pytest.skip(f"clock faults need the clock layer: {reason}")
    ids = [n.id for n in observed.cluster.nodes]
    schedule = each_fault_once(observed.cluster.spec.seed, ids, NEW_FAULTS,
                               fault_s=FAULT_S, heal_s=HEAL_S)
    try:
        play(schedule, observed.nemesis)
    except UnsupportedFault as exc:
        pytest.skip(str(exc))
    result = judge(observed, evidence)
    assert result.valid is True, f"{verdict(result, observed)}\n{schedule.describe()}"
