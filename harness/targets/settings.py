"""What a target runs with, as it reports it: gossip timings, how a suspect becomes dead,
how its membership can be read, and where it knowingly departs from the protocol.

Suites derive every bound from this report instead of setting timings themselves: the
reference server reports what it was given (its profile's defaults overridden by the
spec's `gossip`), real HStreamDB the defaults its version starts with (it ignores
`hserver.gossip.*`). `deviations` names the known departures (finding id -> the source
that shows it): a check that meets one reports it as a finding of that target and
version (harness.findings), not as a failure and not as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GossipSettings:
    probe_interval_s: float
    roundtrip_timeout_s: float
    gossip_interval_s: float
    fanout: int = 3
    retransmit_mult: int = 4
    # "suspicion-timeout": suspects are confirmed after suspicion_mult * max(1, log10 n)
    # probe intervals (Lifeguard/memberlist); "one-probe-interval": the prober confirms
    # itself once a whole probe interval passes without an ack (HStreamDB v0.20).
    confirmation: str = "suspicion-timeout"
    suspicion_mult: int = 4
    retransmit_limit: str = "mult*ceil(log10(n+1))"
    # How a member confirmed dead is tried again: "every-dead" (each reconnect interval,
    # every dead member) or "one-random" (HStreamDB v0.20, Reconnect.hs:36-57: one random
    # dead member per attempt, the interval slept after each attempt, and only by a node
    # whose alive list is at least as long as its dead list).
    reconnect_interval_s: float = 30.0
    reconnect: str = "every-dead"

    def suspicion_periods(self, n: int) -> float:
        """Probe intervals from first suspicion to confirmed dead."""
        if self.confirmation == "one-probe-interval":
            return 1.0
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1)))

    def retransmits(self, n: int) -> int:
        """How many times one update is sent at most, in a cluster of n."""
        if self.retransmit_limit.startswith("mult*ceil(ln"):
            return self.retransmit_mult * math.ceil(math.log(n + 2))
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def reconnect_attempts(self, cut_off: int) -> int:
        """Reconnect attempts after a heal until every one of `cut_off` dead members is
        re-admitted, at worst: one when each attempt tries every dead member; one per member
        when each node tries a single random one (they may all pick the same)."""
        return max(1, cut_off) if self.reconnect == "one-random" else 1

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TargetSettings:
    target: str  # "reference" | "hstream"
    version: str  # "v0.20.3", or the reference server's profile's version
    profile: str  # the reference server's profile; "real" for real HStreamDB
    gossip: GossipSettings
    tunable: bool  # whether the target takes gossip timings from the spec
    membership_probe: str = "cli-cluster"  # or "describe-cluster"
    member_lists: str = "all-states"  # or "alive-only": suspects vanish from the lists
    deviations: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How reports name this target: `reference (protocol)`, `hstream v0.20.3`."""
        if self.target == "reference":
            return f"reference ({self.profile})"
        return f"{self.target} {self.version}"

    def deviates(self, finding: str) -> bool:
        return finding in self.deviations

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "version": self.version, "profile": self.profile,
                "gossip": self.gossip.to_json(), "tunable": self.tunable,
                "membership_probe": self.membership_probe, "member_lists": self.member_lists,
                "deviations": dict(self.deviations)}

    @classmethod
    def from_report(cls, target: str, version: str, tunable: bool,
                    report: Mapping[str, Any]) -> TargetSettings:
        """From `python -m refserver.settings_report` output (or the same shape)."""
        gossip = report["gossip"]
        return cls(
            target=target, version=version, profile=str(report["profile"]), tunable=tunable,
            gossip=GossipSettings(
                probe_interval_s=float(gossip["probe_interval_s"]),
                roundtrip_timeout_s=float(gossip["roundtrip_timeout_s"]),
                gossip_interval_s=float(gossip["gossip_interval_s"]),
                fanout=int(gossip["fanout"]), retransmit_mult=int(gossip["retransmit_mult"]),
                confirmation=str(gossip["confirmation"]),
                suspicion_mult=int(gossip["suspicion_mult"]),
                retransmit_limit=str(gossip["retransmit_limit"]),
                reconnect_interval_s=float(gossip.get("reconnect_interval_s", 30.0)),
                reconnect=str(gossip.get("reconnect", "every-dead"))),
            membership_probe=str(report["membership_probe"]),
            member_lists=str(report["member_lists"]),
            deviations=dict(report.get("switches") or {}),
        )


# Real HStreamDB v0.17-v0.20: the gossip defaults it always starts with (it parses
# hserver.gossip.* but app/server.hs:146 passes defaultGossipOpts; hstream-gossip
# Types.hs:173-181), its rules (Probe.hs:111-137, Utils.hs:115-121, 296-309) and its
# departures from the protocol (real-hstream design notes; file:line each).
_GOSSIP = "hstream-gossip/src/HStream/Gossip/"
_SERVER = "hstream/src/HStream/Server/"
HSTREAM_DEVIATIONS: dict[str, str] = {
    "confirm_after_probe": _GOSSIP + "Probe.hs:111-137",
    "retransmit_ln": _GOSSIP + "Utils.hs:115-121",
    "alive_only_lists": _GOSSIP + "Utils.hs:296-309",
    "no_cli_service": _GOSSIP + "Server/Handlers.hs:73-81",
    "refuse_alive_rejoin": _GOSSIP + "Server/Handlers.hs:158-163",
    "reconnect_one_random": _GOSSIP + "Reconnect.hs:36-57",
    "ready_line_before_join": "hstream/app/server.hs:167-180,207",
    "status_self_running": _GOSSIP + "Utils.hs:331-342",
    "auth_cancels": "hs-grpc include/hsgrpc/auth.hpp:37-53",
    "tokens_verbatim": "hs-grpc HsGrpc/Server/Types.hsc:438-439",
    "admin_parse_error_internal": _SERVER + "Handler/Admin.hs:114-146",
    "unicode_names": "common/hstream/HStream/Utils/Validation.hs:33-54",
    "unacked_checked_per_read": _SERVER + "Core/Subscription.hs:562,628-635,669",
    "inflight_waits_for_deadline": _SERVER + "Core/Subscription.hs:1171-1219",
}


def hstream_settings(version: str) -> TargetSettings:
    return TargetSettings(
        target="hstream", version=version, profile="real", tunable=False,
        gossip=GossipSettings(probe_interval_s=2.0, roundtrip_timeout_s=0.5,
                              gossip_interval_s=1.0, fanout=3, retransmit_mult=4,
                              confirmation="one-probe-interval",
                              retransmit_limit="mult*ceil(ln(n+2))",
                              # Reconnect.hs:53 (threadDelay 30 s), :36-57 (one at a time)
                              reconnect_interval_s=30.0, reconnect="one-random"),
        membership_probe="describe-cluster", member_lists="alive-only",
        deviations=dict(HSTREAM_DEVIATIONS))
