"""Gossip settings: the real hstream-server's defaults, its flag names, and seed parsing.

The flags default to the chosen profile's gossip defaults (refserver.profiles; both
profiles use the real server's). The real server itself takes no gossip setting from
outside (app/server.hs:146 starts gossip with defaultGossipOpts).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from refserver.membership import NodeAddress
from refserver.profiles import PROTOCOL, REAL_GOSSIP_DEFAULTS, Profile

DEFAULT_GOSSIP_PORT = 6571
_FLAG_NAMES = (
    "probe_interval_ms",
    "roundtrip_timeout_ms",
    "indirect_checks",
    "suspicion_mult",
    "retransmit_mult",
    "gossip_interval_ms",
    "gossip_fanout",
    "join_timeout_ms",
    "reconnect_interval_ms",
)


class BadSeedList(ValueError):
    pass


def parse_seeds(text: str, default_port: int = DEFAULT_GOSSIP_PORT) -> list[tuple[str, int]]:
    """Parse `host[:port],...` as --seed-nodes takes it; the port defaults to 6571."""
    seeds: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, str(default_port)
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadSeedList(
                f"bad seed node {item!r} in --seed-nodes {text!r}: expected host[:port] with "
                "a port in 1..65535, e.g. 127.0.0.1:6571,127.0.0.2"
            )
        seeds.append((host, int(port_text)))
    if not seeds:
        raise BadSeedList(
            f"--seed-nodes {text!r} names no node: give at least one host[:port], "
            "e.g. the node's own gossip address for a one-node cluster"
        )
    return seeds


@dataclass(frozen=True)
class GossipConfig:
    self_node: NodeAddress
    seeds: list[tuple[str, int]]
    # Defaults: the real server's (refserver.profiles.REAL_GOSSIP_DEFAULTS), stated once.
    probe_interval: float = REAL_GOSSIP_DEFAULTS.probe_interval
    roundtrip_timeout: float = REAL_GOSSIP_DEFAULTS.roundtrip_timeout
    indirect_checks: int = REAL_GOSSIP_DEFAULTS.indirect_checks
    # memberlist's shape: suspicion lasts suspicion_mult * max(1, log10(n)) probe intervals
    suspicion_mult: int = REAL_GOSSIP_DEFAULTS.suspicion_mult
    # each update rides on at most retransmit_mult * ceil(log10(n + 1)) outgoing messages
    retransmit_mult: int = REAL_GOSSIP_DEFAULTS.retransmit_mult
    gossip_interval: float = REAL_GOSSIP_DEFAULTS.gossip_interval
    fanout: int = REAL_GOSSIP_DEFAULTS.fanout
    join_timeout: float = REAL_GOSSIP_DEFAULTS.join_timeout
    # the real server retries SendReconnect to a dead member every 30 s
    reconnect_interval: float = REAL_GOSSIP_DEFAULTS.reconnect_interval
    defects: frozenset[str] = field(default_factory=frozenset)
    profile: Profile = PROTOCOL

    def __post_init__(self) -> None:
        problems = []
        if self.probe_interval <= 0:
            problems.append(f"probe interval must be > 0 (got {self.probe_interval} s)")
        if not 0 < self.roundtrip_timeout < self.probe_interval:
            problems.append(
                f"round-trip timeout ({self.roundtrip_timeout} s) must be > 0 and shorter "
                f"than the probe interval ({self.probe_interval} s)"
            )
        if self.indirect_checks < 0:
            problems.append(f"indirect checks must be >= 0 (got {self.indirect_checks})")
        if self.suspicion_mult < 1 or self.retransmit_mult < 1:
            problems.append("suspicion and retransmit multipliers must be >= 1")
        if self.gossip_interval <= 0 or self.fanout < 1:
            problems.append("gossip interval must be > 0 and fanout >= 1")
        if self.join_timeout <= 0 or self.reconnect_interval <= 0:
            problems.append("join timeout and reconnect interval must be > 0")
        if not self.seeds:
            problems.append("at least one seed node is needed")
        if problems:
            raise ValueError("invalid gossip settings: " + "; ".join(problems))

    def suspicion_timeout(self, cluster_size: int) -> float:
        spread = max(1.0, math.log10(max(cluster_size, 1)))
        return self.suspicion_mult * spread * self.probe_interval

    def retransmit_limit(self, cluster_size: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(cluster_size + 1)))

    def retransmit_limit_ln(self, other_alive: int) -> int:
        """Profile hstream-0.20 (Utils.hs:118): 4 * ceil(ln(n + 2)) with n the other
        alive members; the real server hard-codes the 4, which is retransmit_mult's
        default (the flag still applies here, as every gossip flag does)."""
        return self.retransmit_mult * math.ceil(math.log(other_alive + 2))

    def expected_first_detection(self) -> float:
        """SWIM's mean time until some member probes a failed one: each of the n-1 others
        picks it with probability 1/(n-1) per period, so 1/(1-(1-1/(n-1))^(n-1)) periods,
        which tends to e/(e-1) ~ 1.58 as n grows."""
        return math.e / (math.e - 1) * self.probe_interval

    def failure_detection_bound(self, cluster_size: int) -> float:
        """Worst case from a member's failure until every other member has it dead.

        - first detection: in round-robin order a member is probed once per round of n-1
          periods; across a reshuffle it can be probed first and then last, so at most
          2(n-1) periods pass before some member's probe of it starts, plus the one
          period that probe takes (direct, then indirect);
        - suspicion: the suspicion timeout (each member that hears Suspect starts its own
          timer, so the Confirm need not travel); none when the prober confirms at the
          end of its probe (profile hstream-0.20), whose Confirm then travels instead;
        - dissemination of the Suspect to everyone: the infection-style spread covers n
          members in about log2(n) gossip rounds, plus one for the round in flight.
        """
        n = max(cluster_size, 2)
        first_detection = (2 * (n - 1) + 1) * self.probe_interval
        dissemination = (math.ceil(math.log2(n)) + 1) * self.gossip_interval
        if self.profile.confirm_after_probe:
            return first_detection + dissemination
        return first_detection + self.suspicion_timeout(n) + dissemination

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """The gossip flags, in milliseconds like hstream-server's config keys. Unset
        flags take the profile's defaults, which are the real server's (in brackets)."""
        real = REAL_GOSSIP_DEFAULTS
        group = parser.add_argument_group(
            "gossip",
            "hstream-server takes no gossip setting from outside and always runs the "
            "defaults in brackets (app/server.hs:146); every profile here takes these "
            "flags, so that tests can run short periods",
        )
        group.add_argument(
            "--probe-interval-ms",
            type=int,
            default=None,
            help="SWIM protocol period: one member is probed per period "
            f"[{real.probe_interval * 1000:g}]",
        )
        group.add_argument(
            "--roundtrip-timeout-ms",
            type=int,
            default=None,
            help="wait this long for an Ack before asking others (PingReq) "
            f"[{real.roundtrip_timeout * 1000:g}]",
        )
        group.add_argument(
            "--indirect-checks",
            type=int,
            default=None,
            help="how many members are asked to probe an unresponsive one "
            f"[{real.indirect_checks}]",
        )
        group.add_argument(
            "--suspicion-mult",
            type=int,
            default=None,
            help="suspicion timeout = mult * max(1, log10 n) * probe interval "
            f"[{real.suspicion_mult}; profile hstream-0.20 has no suspicion timeout]",
        )
        group.add_argument(
            "--retransmit-mult",
            type=int,
            default=None,
            help="each update is piggybacked mult * ceil(log10(n+1)) times (profile "
            "hstream-0.20: mult * ceil(ln(n+2)), n = other alive members) "
            f"[{real.retransmit_mult}]",
        )
        group.add_argument(
            "--gossip-interval-ms",
            type=int,
            default=None,
            help="period of the gossip round to --gossip-fanout members "
            f"[{real.gossip_interval * 1000:g}]",
        )
        group.add_argument("--gossip-fanout", type=int, default=None, help=f"[{real.fanout}]")
        group.add_argument(
            "--join-timeout-ms",
            type=int,
            default=None,
            help="give up (exit non-zero) when no seed accepts the join by then "
            f"[{real.join_timeout * 1000:g}]",
        )
        group.add_argument(
            "--reconnect-interval-ms",
            type=int,
            default=None,
            help="how often a dead member is tried again (partition healing) "
            f"[{real.reconnect_interval * 1000:g}]",
        )

    @staticmethod
    def flags_given(args: argparse.Namespace) -> list[str]:
        """The gossip flags set on the command line (not left to the profile)."""
        given = [name for name in _FLAG_NAMES if getattr(args, name, None) is not None]
        return ["--" + name.replace("_", "-") for name in given]

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        self_node: NodeAddress,
        defects: frozenset[str],
        profile: Profile = PROTOCOL,
    ) -> GossipConfig:
        seed_text = getattr(args, "seed_nodes", None) or (
            f"{self_node.gossip_host}:{self_node.gossip_port}"
        )
        base = profile.gossip_defaults

        def seconds(flag_ms: int | None, default: float) -> float:
            return default if flag_ms is None else flag_ms / 1000

        def count(flag: int | None, default: int) -> int:
            return default if flag is None else flag

        return cls(
            self_node=self_node,
            seeds=parse_seeds(seed_text),
            probe_interval=seconds(args.probe_interval_ms, base.probe_interval),
            roundtrip_timeout=seconds(args.roundtrip_timeout_ms, base.roundtrip_timeout),
            indirect_checks=count(args.indirect_checks, base.indirect_checks),
            suspicion_mult=count(args.suspicion_mult, base.suspicion_mult),
            retransmit_mult=count(args.retransmit_mult, base.retransmit_mult),
            gossip_interval=seconds(args.gossip_interval_ms, base.gossip_interval),
            fanout=count(args.gossip_fanout, base.fanout),
            join_timeout=seconds(args.join_timeout_ms, base.join_timeout),
            reconnect_interval=seconds(args.reconnect_interval_ms, base.reconnect_interval),
            defects=frozenset(defects),
            profile=profile,
        )
