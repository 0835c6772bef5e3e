"""Behaviour profiles: which server the reference server behaves like.

`protocol` (the default) is the protocol-correct server the suites are written against:
SWIM as published, the refutations and bounds the harness derives its checks from.
`hstream-0.20` reproduces what the real hstream-server v0.20.3 observably does where it
differs, as read from its source (hstreamdb/hstream at tag v0.20.3 and its hs-grpc
submodule). Each switch names, in its comment and in `field(metadata={"mirrors": ...})`,
the HStreamDB file:line it mirrors; `mirrors()` lists them for reports.

One frozen `Profile` is chosen at start-up (`python -m refserver --profile NAME`) and
handed to the gossip layer (through GossipConfig) and to the API services. Seeded
defects (refserver.defects) are independent of it and work under either profile.

Gossip timings: the real server ignores `hserver.gossip.*` and every flag and starts
gossip with `defaultGossipOpts` (app/server.hs:146, Types.hs:173-181), so its timings
cannot be changed. Both profiles take those defaults as theirs; the hstream-0.20 profile
still accepts the timing flags (tests cannot wait out 2 s probes everywhere) and logs
that the real server would not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import grpc

# Paths below are in hstreamdb/hstream at v0.20.3, except auth.hpp / Types.hsc (hs-grpc).
_GOSSIP = "hstream-gossip/src/HStream/Gossip/"
_SERVER = "hstream/src/HStream/Server/"


@dataclass(frozen=True)
class GossipDefaults:
    """What the gossip flags default to (seconds, counts)."""

    probe_interval: float = 2.0
    roundtrip_timeout: float = 0.5
    gossip_interval: float = 1.0
    fanout: int = 3
    retransmit_mult: int = 4
    reconnect_interval: float = 30.0
    indirect_checks: int = 1
    suspicion_mult: int = 4
    join_timeout: float = 30.0


# defaultGossipOpts (Types.hs:173-181), one indirect PingReq (Probe.hs:149), reconnect
# every 30 s (Reconnect.hs:53); suspicion_mult and join_timeout are ours.
REAL_GOSSIP_DEFAULTS = GossipDefaults()


def _mirrors(source: str) -> Any:
    """A switch, off by default, and the HStreamDB source whose behaviour it turns on."""
    return field(default=False, metadata={"mirrors": source})


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    gossip_defaults: GossipDefaults = REAL_GOSSIP_DEFAULTS

    # --- gossip -------------------------------------------------------------------------
    # No suspicion timer: the prober itself sends Confirm once a whole probe interval
    # passes with neither a direct nor an indirect ack (Suspect after the PingReq's round
    # trip). Suspects heard by gossip stay suspect until a Confirm or an Alive arrives.
    confirm_after_probe: bool = _mirrors(_GOSSIP + "Probe.hs:111-137")
    # Each update rides on at most 4*ceil(ln(n+2)) messages, n = the other *alive*
    # members (SWIM/memberlist: mult*ceil(log10(cluster size + 1))).
    retransmit_ln: bool = _mirrors(_GOSSIP + "Utils.hs:115-121")
    # Member lists hold alive members only: probe order, gossip targets, the JoinResp
    # members and the retransmit count leave suspects out (getMemberList,
    # getOtherMembersSTM).
    alive_only_lists: bool = _mirrors(_GOSSIP + "Utils.hs:296-309")
    # The gossip service registers only the six Send* methods: CliJoin, CliCluster,
    # CliUserEvent and CliGetSeenEvents answer UNIMPLEMENTED.
    no_cli_service: bool = _mirrors(_GOSSIP + "Server/Handlers.hs:73-81")
    # A join from an id the seed holds alive is refused with DuplicateNodeId
    # (ALREADY_EXISTS) even from the member's own address: a node restarted before its
    # peers confirmed its old life dead cannot rejoin (the protocol profile takes such a
    # join for the restart it is).
    refuse_alive_rejoin: bool = _mirrors(_GOSSIP + "Server/Handlers.hs:158-163")
    # Confirmed-dead members are retried by one loop (scheduleReconnect): as soon as any
    # member is dead it tries ONE of them, chosen at random, then sleeps the reconnect
    # interval (30 s) whatever the outcome; and it tries only while its alive list (itself
    # included) is at least as long as its dead list (prob = dead / min 1 (alive - dead):
    # negative below that, so a minority side never reconnects and waits to be re-admitted
    # by the majority). The protocol profile retries every dead member each interval.
    reconnect_one_random: bool = _mirrors(_GOSSIP + "Reconnect.hs:36-57")
    # "Server is started on port N" is printed once the API serves, before gossip has
    # joined; a refused join then ends the process (non-zero) after the ready line.
    ready_line_before_join: bool = _mirrors(
        "hstream/app/server.hs:167-180,207; " + _GOSSIP + "Start.hs:251-253"
    )
    # `server status` lists the asking node as Running whatever its readiness (its own
    # entry is overwritten by the member list's, which holds it as alive); DescribeCluster
    # still says Starting before the cluster is ready.
    status_self_running: bool = _mirrors(_GOSSIP + "Utils.hs:331-342")
    # SIGTERM ends the process without a word to its peers: the server installs handlers
    # for fatal signals only (SIGSEGV, SIGABRT, ...), so no leave is announced and the
    # peers confirm it dead by probing (the protocol profile announces a graceful leave,
    # GossipNode.leave).
    silent_leave: bool = _mirrors(
        "hstream/app/server.hs:107-109; common/base/cbits/fatalsignal.cpp:197-201"
    )

    # --- authentication -----------------------------------------------------------------
    # Without TLS a refused call is cancelled by the interceptor (TryCancel): the client
    # sees CANCELLED, not UNAUTHENTICATED.
    auth_cancels: bool = _mirrors("hs-grpc include/hsgrpc/auth.hpp:37-53")
    # The authorization header must equal "Basic " + a configured token byte for byte
    # (the config holds the base64 value); no decoding, no case folding of the scheme.
    tokens_verbatim: bool = _mirrors("hs-grpc HsGrpc/Server/Types.hsc:438-439")

    # --- API ----------------------------------------------------------------------------
    # An admin command that does not parse is an ioError → INTERNAL with plain text
    # (the protocol profile answers an "error" result).
    admin_parse_error_internal: bool = _mirrors(
        _SERVER + "Handler/Admin.hs:114-146; " + _SERVER + "Exception.hs:94-98"
    )
    # Names (streams, subscriptions, shard readers): Unicode isLetter first, then
    # isAlphaNum or '-'/'_', 1-255 characters (the protocol profile: ASCII only).
    unicode_names: bool = _mirrors("common/hstream/HStream/Utils/Validation.hs:33-54")
    # maxUnackedRecords is checked once before each read, and one read (up to 100
    # batches over the consumer's shards) is sent whole (the protocol profile checks
    # before every batch).
    unacked_checked_per_read: bool = _mirrors(_SERVER + "Core/Subscription.hs:562,628-635,669")
    # A departed consumer's shards move without a re-read; its in-flight records are
    # resent only at their ack deadline (the protocol profile resends them at once).
    inflight_waits_for_deadline: bool = _mirrors(
        _SERVER + "Core/Subscription.hs:1171-1219,911-929,787-799"
    )

    @property
    def subscription_read_batches(self) -> int:
        """Batches asked of the store per subscription read."""
        return 100 if self.unacked_checked_per_read else 16

    @property
    def auth_refusal(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED if self.auth_cancels else grpc.StatusCode.UNAUTHENTICATED

    def switches(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if "mirrors" in f.metadata}

    def mirrors(self) -> dict[str, str]:
        """Every switch this profile turns on → the HStreamDB source it mirrors."""
        return {
            f.name: f.metadata["mirrors"]
            for f in fields(self)
            if "mirrors" in f.metadata and getattr(self, f.name)
        }


PROTOCOL = Profile(
    name="protocol",
    summary="protocol-correct SWIM and API (the default; what the suites check against)",
)

HSTREAM_0_20 = Profile(
    name="hstream-0.20",
    summary="the observable behaviour of hstream-server v0.20.3 where it differs",
    confirm_after_probe=True,
    retransmit_ln=True,
    alive_only_lists=True,
    no_cli_service=True,
    refuse_alive_rejoin=True,
    reconnect_one_random=True,
    ready_line_before_join=True,
    status_self_running=True,
    silent_leave=True,
    auth_cancels=True,
    tokens_verbatim=True,
    admin_parse_error_internal=True,
    unicode_names=True,
    unacked_checked_per_read=True,
    inflight_waits_for_deadline=True,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PROTOCOL, HSTREAM_0_20)}


class UnknownProfile(ValueError):
    pass


def parse_profile(name: str) -> Profile:
    """The profile called `name`; the error lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(
            f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}"
        ) from None
