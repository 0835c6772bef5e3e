"""What targets report they run with, and the bounds and probes suites derive from it."""

from __future__ import annotations

import math

import pytest

from harness import HarnessError
from harness.probes import CliClusterProbe, DescribeClusterProbe, probe_for
from harness.targets import settings_for
from harness.topology import ClusterSpec
from suites.membership.bounds import DOCKER_STRETCH, TIMINGS, agreement_bound_s, timings

FAST = {"probe_interval_ms": 300, "roundtrip_timeout_ms": 120, "gossip_interval_ms": 150,
        "suspicion_mult": 3}


def test_reference_reports_what_it_was_given() -> None:
    settings = settings_for(ClusterSpec(gossip=FAST))
    assert settings.tunable and settings.profile == "protocol"
    gossip = settings.gossip
    assert (gossip.probe_interval_s, gossip.roundtrip_timeout_s, gossip.gossip_interval_s) == (
        0.3, 0.12, 0.15)
    assert gossip.confirmation == "suspicion-timeout"
    assert gossip.suspicion_periods(5) == pytest.approx(3.0)  # mult * max(1, log10 5)
    assert settings.membership_probe == "cli-cluster" and settings.deviations == {}


def test_reference_without_timings_reports_the_real_defaults() -> None:
    gossip = settings_for(ClusterSpec()).gossip
    # hstream-gossip Types.hs:173-181 (defaultGossipOpts), which the reference server takes
    assert (gossip.probe_interval_s, gossip.roundtrip_timeout_s, gossip.gossip_interval_s,
            gossip.fanout, gossip.retransmit_mult) == (2.0, 0.5, 1.0, 3, 4)


def test_the_hstream_profile_reports_the_real_rules() -> None:
    settings = settings_for(ClusterSpec(profile="hstream-0.20", gossip=FAST))
    assert settings.label == "reference (hstream-0.20)"
    assert settings.gossip.confirmation == "one-probe-interval"
    assert settings.gossip.suspicion_periods(5) == 1.0
    # Utils.hs:118: 4*ceil(ln(n+2))
    assert settings.gossip.retransmits(3) == 4 * math.ceil(math.log(5))
    assert settings.member_lists == "alive-only"
    assert settings.membership_probe == "describe-cluster"
    assert {"auth_cancels", "refuse_alive_rejoin", "unicode_names"} <= set(settings.deviations)


def test_an_unknown_profile_is_refused_before_anything_starts() -> None:
    with pytest.raises(HarnessError, match="nope"):
        settings_for(ClusterSpec(profile="nope"))


def test_real_hstream_reports_its_versions_defaults_and_takes_no_timings() -> None:
    settings = settings_for(ClusterSpec(target="hstream:hstreamdb/hstream:v0.20.3",
                                        backend="docker"))
    assert settings.label == "hstream v0.20.3" and not settings.tunable
    assert settings.gossip.probe_interval_s == 2.0
    assert settings.gossip.confirmation == "one-probe-interval"
    assert settings.membership_probe == "describe-cluster"


def test_bounds_follow_the_confirmation_rule() -> None:
    protocol = settings_for(ClusterSpec(gossip=FAST))
    real_rules = settings_for(ClusterSpec(profile="hstream-0.20", gossip=FAST))
    # Same timings; confirming after one probe interval is faster than a 3-period timer.
    assert agreement_bound_s(real_rules, 3) < agreement_bound_s(protocol, 3)
    difference = agreement_bound_s(protocol, 3) - agreement_bound_s(real_rules, 3)
    assert difference == pytest.approx((3 - 1) * 0.3)


def test_the_probe_is_the_one_the_target_supports() -> None:
    assert isinstance(probe_for(settings_for(ClusterSpec()), [1, 2]), CliClusterProbe)
    probe = probe_for(settings_for(ClusterSpec(profile="hstream-0.20")), [1, 2])
    assert isinstance(probe, DescribeClusterProbe)
    assert probe.absent == "dead"  # a member missing from alive-only lists is not alive


def test_membership_timings_are_stretched_on_docker_and_the_bounds_follow() -> None:
    assert timings("local") == TIMINGS and timings("ssh") == TIMINGS
    slow = timings("docker")
    assert slow["probe_interval_ms"] == TIMINGS["probe_interval_ms"] * DOCKER_STRETCH
    assert slow["roundtrip_timeout_ms"] == TIMINGS["roundtrip_timeout_ms"] * DOCKER_STRETCH
    assert slow["suspicion_mult"] == TIMINGS["suspicion_mult"]  # a count, not a period
    # still well below the real defaults (probe 2 s, roundtrip 500 ms)
    gossip = settings_for(ClusterSpec(backend="docker", gossip=slow)).gossip
    assert gossip.probe_interval_s < 2.0 and gossip.roundtrip_timeout_s < 0.5
    fast = settings_for(ClusterSpec(gossip=timings("local")))
    assert agreement_bound_s(settings_for(ClusterSpec(backend="docker", gossip=slow)), 3) > \
        agreement_bound_s(fast, 3)
