"""One SWIM member speaking HStreamDB's `hstream.gossip.HStreamGossip` over grpc.aio.

Failure detection (where the real server cuts corners, this follows SWIM):
- every probe_interval one member is pinged, in a shuffled round-robin order (every
  member is probed once per round, so a failure is found within n periods at worst and
  e/(e-1) periods on average);
- no Ack within roundtrip_timeout: `indirect_checks` random alive members are asked to
  ping it (SendPingReq); still no Ack by the end of the period: Suspect(incarnation);
- a suspicion not refuted within suspicion_mult * max(1, log10 n) * probe_interval
  becomes Confirm (dead); a node that hears it is suspected (or confirmed) answers with
  Alive(incarnation + 1);
- updates are piggybacked on Ping, Ack, PingReq and the gossip rounds, at most
  retransmit_mult * ceil(log10(n + 1)) times each, freshest first. Every Ping opens with
  the sender's own Alive(incarnation), so the receiver learns who pings it; a Ping or
  gossip to a member this node thinks suspect or dead carries that claim, and so does the
  Ack to such a sender, so the member can refute it even after the update has run out of
  retransmissions;
- dead members are tried again every reconnect_interval (SendReconnect, then a Ping that
  carries their Confirm): a member that was only cut off refutes and rejoins the views
  (profile hstream-0.20: one random dead member per attempt, Reconnect.hs);

Incarnations start at the node's start time in quarter seconds since 2026-01-01, rounded
up, and a node does not start before that moment has passed: so every later life of
the node starts with a larger incarnation and outbids the one the cluster remembers for
the previous life, seeds included (which have nobody to assign them a new one). The
seed that accepts a non-seed's rejoin also assigns at least known + 1 and says so in
the JoinResp.

Bootstrap (as the real server, simplified where noted):
- a node whose gossip address is its only seed is a one-node cluster, ready at once;
- a node that is not a seed, or finds (SendBootstrapPing → "Cluster is ready") that the
  cluster already runs, sends SendJoin to the seeds until one accepts; the seed answers
  {epoch, members}, refuses a live member's id from another address with
  ALREADY_EXISTS, and refuses with FAILED_PRECONDITION while it is not ready itself (the
  joiner retries until join_timeout, then `start()` raises JoinFailed);
- several seeds wait for `server init` on any one of them; that seed waits until every
  seed answers SendBootstrapPing, then gossips the INIT event listing them; each seed
  adds the list and gossips INITED; a seed is ready once it has seen INITED from every
  seed. (A seed restarted in the middle of an init is not handled.)

Profile hstream-0.20 (refserver.profiles) changes, as the real server does: no suspicion
timer (the prober confirms a member dead once a whole probe interval passed without any
ack); retransmissions 4*ceil(ln(n+2)) with n the other alive members; member lists (probe
order, gossip targets, JoinResp) of alive members only; no Cli* methods (UNIMPLEMENTED);
a join from an id held alive refused with DuplicateNodeId even from the member's own
address; `server status` with this node Running whatever its readiness; an admin command
that does not parse raises UnknownAdminCommand (the API answers INTERNAL).

A ServerNode that describes a member outside a state report (JoinReq, JoinResp, the INIT
list, SendBootstrapPing, CliCluster) carries the member's state and incarnation in
`advertisedListeners["gossip-state"]` (see refserver.gossip.wire); a real server reads
that as one more advertised listener and ignores it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory

from harness.protos import HStreamGossip_pb2, HStreamGossip_pb2_grpc, HStreamInternal_pb2
from refserver.errors import UnknownAdminCommand
from refserver.gossip import wire
from refserver.gossip.broadcasts import BroadcastQueue
from refserver.gossip.config import GossipConfig
from refserver.gossip.members import MemberRecord, MemberTable
from refserver.membership import Member, MemberState, NodeAddress

log = logging.getLogger("refserver.gossip")

# Incarnations travel in Listener.port (int32) in views: quarter seconds since 2026-01-01
# stay below 2^31 until 2043.
INCARNATION_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
INCARNATION_TICKS_PER_SECOND = 4
SEEN_EVENTS_KEPT = 1024
# A killed peer's channel must come back quickly once it restarts (gRPC's default
# reconnect backoff grows to two minutes, far beyond any probe period).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


# What the real server's gossip service registers (Server/Handlers.hs:73-81): the Cli*
# methods are left out under profile hstream-0.20.
SEND_METHODS = (
    "SendBootstrapPing",
    "SendPing",
    "SendPingReq",
    "SendJoin",
    "SendGossip",
    "SendReconnect",
)
GOSSIP_SERVICE = HStreamGossip_pb2.DESCRIPTOR.services_by_name["HStreamGossip"]


class JoinFailed(RuntimeError):
    """The node could not enter the cluster; the message says why and what to change."""


def initial_incarnation() -> int:
    """The next clock tick after now; returns only once that tick has passed.

    Waiting (at most a quarter second, once per process) is what makes incarnations grow
    across restarts: a life that announced incarnation i was already past tick i, so the
    next life starts past it too and takes at least i + 1.
    """
    now = time.time()
    incarnation = max(1, int((now - INCARNATION_EPOCH) * INCARNATION_TICKS_PER_SECOND) + 1)
    time.sleep(max(0.0, INCARNATION_EPOCH + incarnation / INCARNATION_TICKS_PER_SECOND - now))
    return incarnation


def _incarnation_of(server_node: HStreamInternal_pb2.ServerNode) -> int | None:
    listeners = server_node.advertisedListeners.get(wire.STATE_LISTENER_KEY)
    if listeners is None or not listeners.listeners:
        return None
    return max(0, listeners.listeners[0].port)


def _address(host: str, port: int) -> str:
    return f"{host}:{port}"


class GossipNode:
    """Implements refserver.membership.Membership.

    Use: `add_to_server(server)` before the gRPC server starts, then `await start()`
    (returns once joined; a seed waiting for `server init` returns at once and becomes
    ready later; raises JoinFailed, already stopped, when no seed accepts the join within
    join_timeout), finally `await stop()`. Subscribers are called in the event loop and
    must not block.
    """

    def __init__(self, config: GossipConfig) -> None:
        self.config = config
        self.profile = config.profile
        self._self = config.self_node
        self._incarnation = initial_incarnation()
        self._table = MemberTable()
        self._broadcasts = BroadcastQueue()
        self._subscribers: list[Callable[[Member], None]] = []
        self._rng = random.Random()
        own = (self._self.gossip_host, self._self.gossip_port)
        self._is_seed = own in config.seeds
        self._other_seeds = [s for s in dict.fromkeys(config.seeds) if s != own]
        self._seed_count = len(self._other_seeds) + (1 if self._is_seed else 0)
        self._ready = False
        self._inited = False
        self._joined_running = False  # this seed found the cluster running and joined it
        self._inited_seeds: set[int] = set()
        self._lamport = 0
        self._seen_events: deque[tuple[str, int, bytes]] = deque(maxlen=SEEN_EVENTS_KEPT)
        self._probe_order: list[int] = []
        self._suspicion_timers: dict[int, asyncio.TimerHandle] = {}
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._left: set[int] = set()  # members heard leaving (defect leave-tombstone)
        self._started = False
        self._stopped = False

    # ----------------------------------------------------------------- Membership
    @property
    def self_node(self) -> NodeAddress:
        return self._self

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def members(self) -> dict[int, Member]:
        found = {r.node.id: r.snapshot() for r in self._table.records()}
        found[self._self.id] = Member(self._self, MemberState.ALIVE, self._incarnation)
        return found

    def alive(self) -> list[NodeAddress]:
        nodes = [r.node for r in self._table.in_state(MemberState.ALIVE)]
        return sorted([self._self, *nodes], key=lambda n: n.id)

    def is_ready(self) -> bool:
        return self._ready

    def subscribe(self, callback: Callable[[Member], None]) -> None:
        self._subscribers.append(callback)

    def node_states(self) -> list[tuple[NodeAddress, str]]:
        """DescribeCluster's serverNodesStatus as the real server builds it, with
        hstream.server.NodeState names: this node first ("Running" once the cluster is
        ready, else "Starting"), then alive members "Running" and dead ones "Dead", by id;
        suspected members are in neither list (serverNodes = the "Running" ones)."""
        states = [(self._self, "Running" if self._ready else "Starting")]
        for record in self._table.records():
            if record.state is MemberState.ALIVE:
                states.append((record.node, "Running"))
            elif record.state is MemberState.DEAD:
                states.append((record.node, "Dead"))
        return states

    def cluster_size(self) -> int:
        return 1 + len(self._table.in_state(MemberState.ALIVE, MemberState.SUSPECT))

    def _listed(self) -> list[MemberRecord]:
        """The other members this node probes, gossips to and names in a JoinResp:
        alive and suspected ones; alive ones only under profile hstream-0.20
        (Utils.hs:296-309)."""
        if self.profile.alive_only_lists:
            return self._table.in_state(MemberState.ALIVE)
        return self._table.in_state(MemberState.ALIVE, MemberState.SUSPECT)

    def _retransmit_limit(self) -> int:
        if self.profile.retransmit_ln:
            return self.config.retransmit_limit_ln(len(self._table.in_state(MemberState.ALIVE)))
        return self.config.retransmit_limit(self.cluster_size())

    # ----------------------------------------------------------------- lifecycle
    def add_to_server(self, server: grpc.aio.Server) -> None:
        if not self.profile.no_cli_service:
            HStreamGossip_pb2_grpc.add_HStreamGossipServicer_to_server(_Servicer(self), server)
            return
        # Only what the real server registers: a Cli* call finds no method (UNIMPLEMENTED).
        servicer = _Servicer(self)
        handlers = {}
        for method in GOSSIP_SERVICE.methods:
            if method.name not in SEND_METHODS:
                continue
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=message_factory.GetMessageClass(
                    method.input_type
                ).FromString,
                response_serializer=message_factory.GetMessageClass(
                    method.output_type
                ).SerializeToString,
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(GOSSIP_SERVICE.full_name, handlers),)
        )

    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"gossip node {self._self.id} was already started")
        self._started = True
        self._spawn(self._probe_loop())
        self._spawn(self._gossip_loop())
        self._spawn(self._reconnect_loop())
        try:
            running = await self._classify_seeds()
            if self._is_seed and not self._other_seeds:
                log.info("node %d: the only seed, the cluster is ready", self._self.id)
                self._inited = True
                self._announce_self()
                self._mark_ready()
                return
            if self._is_seed and not running:
                log.info("node %d: seed waiting for `server init`", self._self.id)
                return
            await self._join()
        except BaseException:
            await self.stop()  # JoinFailed or cancellation: leave no loop or channel behind
            raise

    async def leave(self) -> None:
        """Announce a graceful departure before `stop()`: a Confirm of this node by itself,
        sent straight to every member it lists (memberlist's leave: a Dead from the node
        itself). Receivers apply it as any Confirm at this node's incarnation, so the
        member is dead in their views at once instead of after a suspicion; a later life
        starts with a larger incarnation and outbids it. The gossip wire format has no other
        way to say goodbye.

        Profile hstream-0.20 sends nothing: the real server installs no SIGTERM handler
        (hstream/app/server.hs), so the process just ends and its peers find out by probing.
        """
        if self._stopped or self.profile.silent_leave or not self._inited:
            return
        goodbye = wire.state_message("confirm", self._incarnation, self._self, self._self)
        peers = [r.node for r in self._listed()]
        log.info("node %d: leaving; telling %s", self._self.id, [p.id for p in peers])
        rtt = self.config.roundtrip_timeout

        async def tell(peer: NodeAddress) -> None:
            try:
                await self._node_stub(peer).SendGossip(
                    HStreamGossip_pb2.Gossip(msg=[goodbye]), timeout=max(4 * rtt, 0.5)
                )
            except grpc.aio.AioRpcError:
                pass  # a peer that misses it finds out by probing

        await asyncio.gather(*(tell(peer) for peer in peers))

    async def stop(self) -> None:
        """Stop probing and gossiping and close every channel; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for timer in self._suspicion_timers.values():
            timer.cancel()
        self._suspicion_timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        channels = list(self._channels.values())
        self._channels.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node %d: gossip task failed", self._self.id, exc_info=task.exception())

    def _mark_ready(self) -> None:
        if not self._ready:
            self._ready = True
            log.info("node %d: cluster is ready", self._self.id)

    # ----------------------------------------------------------------- outgoing calls
    def _stub(self, host: str, port: int) -> HStreamGossip_pb2_grpc.HStreamGossipStub:
        if self._stopped:
            # a handler still running after stop() must not open channels nobody closes
            raise _Stopped(f"gossip node {self._self.id} is stopped")
        channel = self._channels.get((host, port))
        if channel is None:
            channel = grpc.aio.insecure_channel(_address(host, port), options=CHANNEL_OPTIONS)
            self._channels[(host, port)] = channel
        return HStreamGossip_pb2_grpc.HStreamGossipStub(channel)

    def _node_stub(self, node: NodeAddress) -> HStreamGossip_pb2_grpc.HStreamGossipStub:
        return self._stub(node.gossip_host, node.gossip_port)

    def _fresh_channel(self, node: NodeAddress) -> None:
        """Drop the channel to a member that came back from the dead.

        The old channel failed for as long as the member was down and sits in gRPC's
        reconnect backoff (up to max_reconnect_backoff_ms); the next probe of the new
        process would fail on it without sending a packet and suspect a live member. A new
        channel connects at once.
        """
        channel = self._channels.pop((node.gossip_host, node.gossip_port), None)
        if channel is not None and not self._stopped:
            self._spawn(channel.close())

    def _self_described(self) -> HStreamInternal_pb2.ServerNode:
        return wire.with_state(self._self, MemberState.ALIVE, self._incarnation)

    def _piggyback(
        self, first: Sequence[HStreamGossip_pb2.Message] = ()
    ) -> list[HStreamGossip_pb2.Message]:
        return [*first, *self._broadcasts.take(self._retransmit_limit())]

    def _claims_about(self, member_id: int) -> list[HStreamGossip_pb2.Message]:
        """What this node believes of a suspect or dead member, for that member to refute."""
        record = self._table.get(member_id)
        if record is None or record.state is MemberState.ALIVE:
            return []
        kind = "suspect" if record.state is MemberState.SUSPECT else "confirm"
        return [wire.state_message(kind, record.incarnation, record.node, self._self)]

    def _self_alive(self) -> HStreamGossip_pb2.Message:
        return wire.state_message("alive", self._incarnation, self._self, self._self)

    async def _ping(self, node: NodeAddress, timeout: float) -> bool:
        # Every Ping opens with the sender's own Alive: the receiver learns who pings it (a
        # restarted seed, alone in its view, learns the cluster this way) and can answer
        # with what it believes of the sender.
        claims = [self._self_alive(), *self._claims_about(node.id)]
        request = HStreamGossip_pb2.Ping(msg=self._piggyback(claims))
        try:
            ack = await self._node_stub(node).SendPing(request, timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        self._receive(ack.msg)
        return True

    async def _ping_req(self, helper: NodeAddress, target: NodeAddress, timeout: float) -> bool:
        request = HStreamGossip_pb2.PingReq(
            target=wire.to_server_node(target), msg=self._piggyback()
        )
        try:
            response = await self._node_stub(helper).SendPingReq(request, timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        self._receive(response.msg)
        return response.acked

    # ----------------------------------------------------------------- applying messages
    def _receive(self, messages: Iterable[HStreamGossip_pb2.Message]) -> None:
        for message in messages:
            content = message.WhichOneof("content")
            if content == "state":
                kind = message.state.WhichOneof("content")
                if kind is None:
                    continue
                report = getattr(message.state, kind)
                self._learn_reporter(report.reporter)
                if report.HasField("reportee"):
                    reportee = wire.from_server_node(report.reportee)
                    if kind == "confirm" and report.reporter.id == reportee.id:
                        self._heard_leave(reportee.id)
                    if self._drops_newcomer(reportee.id):
                        continue
                    self._apply_state(kind, report.incarnation, reportee, message)
            elif content == "event":
                self._apply_event(message.event)

    def _learn_reporter(self, reporter: HStreamInternal_pb2.ServerNode) -> None:
        # A member that reports is alive as far as anyone knows; adding it with incarnation
        # 0 loses to any real incarnation, so it only fills gaps (e.g. after a restart).
        if reporter.id == self._self.id or reporter.id in self._table or not reporter.gossipPort:
            return
        if self._drops_newcomer(reporter.id):
            return
        record = self._table.apply_alive(wire.from_server_node(reporter), 0)
        if record is not None:
            self._changed(record)

    def _heard_leave(self, member_id: int) -> None:
        """A member confirmed itself dead: it is leaving (GossipNode.leave)."""
        if "leave-tombstone" in self.config.defects and member_id != self._self.id:
            self._left.add(member_id)

    def _drops_newcomer(self, member_id: int) -> bool:
        """Defect no-new-members: gossip about a member this node has never heard of is
        dropped, so the member list is frozen once bootstrap (INIT) or the join is over."""
        return (
            "no-new-members" in self.config.defects
            and member_id != self._self.id
            and member_id not in self._table
        )

    def _apply_state(
        self,
        kind: str,
        incarnation: int,
        node: NodeAddress,
        message: HStreamGossip_pb2.Message | None = None,
    ) -> None:
        if node.id == self._self.id:
            self._about_self(kind, incarnation)
            return
        if kind == "alive":
            if node.id in self._left:
                # Defect leave-tombstone: a member heard leaving never comes back.
                log.info("node %d: dropping alive(%d) of %d, which left (defect "
                         "leave-tombstone)", self._self.id, incarnation, node.id)
                return
            before = self._table.get(node.id)
            record = self._table.apply_alive(node, incarnation)
            if record is not None and before is not None and before.state is MemberState.DEAD:
                self._fresh_channel(record.node)
        elif kind == "suspect":
            record = self._table.apply_suspect(node.id, incarnation)
        elif kind == "confirm":
            record = self._table.apply_confirm(node.id, incarnation)
        else:
            return
        if record is None:
            return
        if message is None:
            message = wire.state_message(kind, incarnation, record.node, self._self)
        self._broadcasts.queue(("state", node.id), message)
        self._changed(record)

    def _about_self(self, kind: str, incarnation: int) -> None:
        if kind == "alive":
            # a seed that accepted this node's rejoin may have outbid its incarnation
            if incarnation > self._incarnation:
                self._incarnation = incarnation
            return
        if incarnation < self._incarnation:
            return  # an old suspicion, already refuted
        if "no-refute" in self.config.defects:
            log.info(
                "node %d: heard %s(%d) about itself, not refuting (defect no-refute)",
                self._self.id,
                kind,
                incarnation,
            )
            return
        self._incarnation = incarnation + 1
        log.info(
            "node %d: refuting %s(%d) with alive(%d)",
            self._self.id,
            kind,
            incarnation,
            self._incarnation,
        )
        self._announce_self()

    def _announce_self(self) -> None:
        self._broadcasts.queue(
            ("state", self._self.id),
            wire.state_message("alive", self._incarnation, self._self, self._self),
        )

    def _changed(self, record: MemberRecord) -> None:
        log.info(
            "node %d: member %d is %s (incarnation %d)",
            self._self.id,
            record.node.id,
            record.state.value,
            record.incarnation,
        )
        timer = self._suspicion_timers.pop(record.node.id, None)
        if timer is not None:
            timer.cancel()
        # Profile hstream-0.20 has no suspicion timer: the prober confirms (_probe).
        confirming = (
            "never-confirm" not in self.config.defects
            and not self._stopped
            and not self.profile.confirm_after_probe
        )
        if record.state is MemberState.SUSPECT and confirming:
            timeout = self.config.suspicion_timeout(self.cluster_size())
            self._suspicion_timers[record.node.id] = asyncio.get_running_loop().call_later(
                timeout, self._suspicion_expired, record.node.id, record.incarnation
            )
        snapshot = record.snapshot()
        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:
                log.exception("node %d: membership subscriber failed", self._self.id)

    def _suspicion_expired(self, member_id: int, incarnation: int) -> None:
        self._suspicion_timers.pop(member_id, None)
        record = self._table.get(member_id)
        if record is None or record.state is not MemberState.SUSPECT:
            return
        if record.incarnation != incarnation:
            return
        self._apply_state("confirm", incarnation, record.node)

    # ----------------------------------------------------------------- events
    def _apply_event(self, event: HStreamGossip_pb2.EventMessage) -> None:
        if self._lamport < event.lamportTime:
            self._lamport = event.lamportTime + 1
        key = (event.name, event.lamportTime, bytes(event.payload))
        if key in self._seen_events:
            return
        self._seen_events.append(key)
        self._broadcasts.queue(("event", *key), HStreamGossip_pb2.Message(event=event))
        if event.name == wire.EVENT_INIT:
            self._on_init_event(event)
        elif event.name == wire.EVENT_INITED:
            self._on_inited_event(event.payload)

    def broadcast_event(self, name: str, payload: bytes) -> HStreamGossip_pb2.EventMessage:
        self._lamport += 1
        event = HStreamGossip_pb2.EventMessage(
            name=name, lamportTime=self._lamport, payload=payload
        )
        self._apply_event(event)
        return event

    def seen_events(self) -> list[tuple[str, bytes]]:
        return [(name, payload) for name, _, payload in self._seen_events]

    def _on_init_event(self, init: HStreamGossip_pb2.EventMessage) -> None:
        if not self._is_seed or self._joined_running or self._inited:
            return
        nodes = HStreamGossip_pb2.ServerList.FromString(init.payload).nodes
        for server_node in nodes:
            node = wire.from_server_node(server_node)
            if node.id != self._self.id:
                self._apply_state("alive", _incarnation_of(server_node) or 0, node)
        self._inited = True
        self._announce_self()
        log.info("node %d: initialised by INIT with %d seeds", self._self.id, len(nodes))
        inited = self.broadcast_event(
            wire.EVENT_INITED, self._self_described().SerializeToString()
        )
        if not self._ready:
            self._spawn(self._repeat_until_ready(init, inited)).set_name("repeat-init")
            self._spawn(self._catch_up_inited()).set_name("catch-up-inited")

    async def _repeat_until_ready(self, *events: HStreamGossip_pb2.EventMessage) -> None:
        """Queue INIT and this seed's INITED again every probe period until ready.

        An event is piggybacked a bounded number of times, so a seed can miss INIT (then it
        never sends INITED and no seed ever becomes ready) or everyone can miss one seed's
        INITED. Sending both again until this seed is ready closes both gaps; receivers
        drop what they have seen, so the cost is a few bytes per message meanwhile.
        """
        while not self._stopped and not self._ready:
            await asyncio.sleep(self.config.probe_interval)
            if self._ready:
                return
            for event in events:
                key = ("event", event.name, event.lamportTime, bytes(event.payload))
                self._broadcasts.queue(key, HStreamGossip_pb2.Message(event=event))

    async def _catch_up_inited(self) -> None:
        """Become ready even if an INITED event never arrives.

        Events spread by gossip, each sent a bounded number of times: delivery is very
        likely, not certain (a seed that learnt its peers only from the INIT list can miss
        one, and then never became ready). A seed that is ready has seen INITED from every
        seed, so once any seed answers "Cluster is ready" every seed is inited, this one
        included, and this one is ready too.
        """
        while not self._stopped and not self._ready:
            await asyncio.sleep(self.config.probe_interval)
            for host, port in list(self._other_seeds):
                if self._ready:
                    return
                answer = await self._bootstrap_ping(host, port, ignore_inited=True)
                if answer == wire.CLUSTER_READY:
                    log.info(
                        "node %d: seed %s reports the cluster ready; INITED seen from %s only",
                        self._self.id,
                        _address(host, port),
                        sorted(self._inited_seeds),
                    )
                    self._mark_ready()
                    return

    def _on_inited_event(self, payload: bytes) -> None:
        if not self._is_seed or self._joined_running:
            return
        self._inited_seeds.add(HStreamInternal_pb2.ServerNode.FromString(payload).id)
        if self._inited and len(self._inited_seeds) >= self._seed_count:
            self._mark_ready()

    # ----------------------------------------------------------------- bootstrap
    async def _bootstrap_ping(
        self, host: str, port: int, ignore_inited: bool
    ) -> HStreamInternal_pb2.ServerNode | str | None:
        """The seed's ServerNode, or the FAILED_PRECONDITION detail, or None if unreachable."""
        try:
            return await self._stub(host, port).SendBootstrapPing(
                HStreamGossip_pb2.BootstrapPing(ignoreInitedErr=ignore_inited),
                timeout=max(1.0, 2 * self.config.roundtrip_timeout),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return error.details() or ""
            return None

    async def _classify_seeds(self) -> bool:
        """BootstrapPing every seed: find this node among them when it is named by another
        address (a host name, say), as the real server does; True if a cluster runs."""
        answers = await asyncio.gather(
            *(self._bootstrap_ping(h, p, ignore_inited=True) for h, p in self._other_seeds)
        )
        me = self._self_described()
        for seed, answer in zip(list(self._other_seeds), answers, strict=True):
            if isinstance(answer, HStreamInternal_pb2.ServerNode) and (
                answer.id,
                answer.gossipAddress,
                answer.gossipPort,
            ) == (me.id, me.gossipAddress, me.gossipPort):
                self._other_seeds.remove(seed)
                self._is_seed = True
        self._seed_count = len(self._other_seeds) + (1 if self._is_seed else 0)
        return any(answer == wire.CLUSTER_READY for answer in answers)

    async def _join(self) -> None:
        self._joined_running = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.join_timeout
        targets = self._other_seeds if self._is_seed else list(dict.fromkeys(self.config.seeds))
        failures: dict[str, str] = {}
        attempt = 0
        while True:
            for host, port in targets:
                request = HStreamGossip_pb2.JoinReq(new=self._self_described())
                try:
                    response = await self._stub(host, port).SendJoin(
                        request, timeout=max(1.0, 4 * self.config.roundtrip_timeout)
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() is grpc.StatusCode.ALREADY_EXISTS:
                        # The real server's words (Start.hs:251-253), then ours.
                        log.critical(
                            "node %d: DuplicateNodeId: Failed to join the cluster, node with "
                            "the same id already exists (seed %s: %s)",
                            self._self.id,
                            _address(host, port),
                            error.details(),
                        )
                        raise JoinFailed(
                            f"DuplicateNodeId: seed {_address(host, port)} refused node "
                            f"{self._self.id}: a live member already has this id "
                            f"({error.details()}); give this node another --server-id, or "
                            "restart it only once the others have confirmed its old life dead"
                        ) from None
                    failures[_address(host, port)] = f"{error.code().name}: {error.details()}"
                    continue
                self._accept_join(response, _address(host, port))
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                tried = "; ".join(f"{a} ({why})" for a, why in failures.items())
                raise JoinFailed(
                    f"node {self._self.id} could not join within {self.config.join_timeout:g} s, "
                    f"no seed accepted: {tried}; check --seed-nodes and that a seed is running "
                    "(and, with several seeds, that `server init` was sent)"
                )
            attempt += 1
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0, remaining))

    def _accept_join(self, response: HStreamGossip_pb2.JoinResp, seed: str) -> None:
        for server_node in response.members:
            node = wire.from_server_node(server_node)
            incarnation = _incarnation_of(server_node) or 0
            if node.id == self._self.id:
                self._incarnation = max(self._incarnation, incarnation)
            else:
                self._apply_state("alive", incarnation, node)
        self._table.epoch = max(self._table.epoch, response.epoch)
        self._inited = True
        self._announce_self()
        log.info(
            "node %d: joined through %s (%d members)", self._self.id, seed, len(response.members)
        )
        self._mark_ready()

    async def _user_init(self) -> None:
        """After `server init`: wait for every seed, then gossip INIT listing them."""
        seeds: dict[tuple[str, int], HStreamInternal_pb2.ServerNode] = {}
        while not self._stopped and not self._inited:
            for host, port in self._other_seeds:
                if (host, port) in seeds:
                    continue
                answer = await self._bootstrap_ping(host, port, ignore_inited=True)
                if isinstance(answer, HStreamInternal_pb2.ServerNode):
                    seeds[(host, port)] = answer
                elif answer == wire.CLUSTER_READY:
                    log.info(
                        "node %d: seed %s already runs a cluster; joining it",
                        self._self.id,
                        _address(host, port),
                    )
                    await self._join()
                    return
            if len(seeds) == len(self._other_seeds):
                break
            await asyncio.sleep(0.5)
        if self._inited or self._stopped:
            return
        listed = HStreamGossip_pb2.ServerList(nodes=[self._self_described(), *seeds.values()])
        self.broadcast_event(wire.EVENT_INIT, listed.SerializeToString())

    # ----------------------------------------------------------------- SWIM loops
    def _next_probe_target(self) -> MemberRecord | None:
        while True:
            if not self._probe_order:
                candidates = [r.node.id for r in self._listed()]
                if not candidates:
                    return None
                self._rng.shuffle(candidates)
                self._probe_order = candidates
            record = self._table.get(self._probe_order.pop())
            if record is not None and record in self._listed():
                return record

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            target = self._next_probe_target()
            if target is not None:
                await self._probe(target, started + self.config.probe_interval)
            await asyncio.sleep(max(0.0, started + self.config.probe_interval - loop.time()))

    async def _probe(self, target: MemberRecord, deadline: float) -> None:
        if self.profile.confirm_after_probe:
            await self._probe_then_confirm(target, deadline)
            return
        rtt = self.config.roundtrip_timeout
        loop = asyncio.get_running_loop()
        sent = loop.time()
        if await self._ping(target.node, rtt):
            return
        if "starved-probes" in self.config.defects:
            self._confirm_overdue(target, loop.time() - sent)
            return
        helpers = [
            r.node for r in self._table.in_state(MemberState.ALIVE) if r.node.id != target.node.id
        ]
        helpers = self._rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        if helpers:
            # the helper needs one round trip of its own; give it the rest of the period
            timeout = max(deadline - asyncio.get_running_loop().time(), 2 * rtt)
            answers = await asyncio.gather(
                *(self._ping_req(helper, target.node, timeout) for helper in helpers)
            )
            if any(answers):
                return
        self._suspect_unanswered(target, len(helpers))

    def _confirm_overdue(self, target: MemberRecord, taken: float) -> None:
        """Defect starved-probes: a Ping not answered within the round-trip timeout, as this
        node's clock and gRPC's deadline see it, is taken for proof that the member is dead:
        it is confirmed at once, without a PingReq through other members or a suspicion the
        member could refute. A prober whose own event loop was held up (CPU starvation)
        times out Pings that were answered in time; the correct path asks members whose
        loops ran meanwhile, and a suspicion gives the member time to refute."""
        current = self._table.get(target.node.id)
        if current is None or current.state is MemberState.DEAD:
            return
        log.info(
            "node %d: no ack from %d within %.0f ms by this node's clock (%.0f ms passed); "
            "confirming it dead (defect starved-probes)",
            self._self.id,
            target.node.id,
            self.config.roundtrip_timeout * 1000,
            taken * 1000,
        )
        self._apply_state("confirm", current.incarnation, current.node)

    def _suspect_unanswered(self, target: MemberRecord, indirect: int) -> None:
        """A probe got no ack, direct or indirect: an alive member becomes a suspect."""
        current = self._table.get(target.node.id)
        if current is not None and current.state is MemberState.ALIVE:
            log.info("node %d: no ack from %d (direct and %d indirect)",
                     self._self.id, target.node.id, indirect)
            self._apply_state("suspect", current.incarnation, current.node)

    async def _probe_then_confirm(self, target: MemberRecord, deadline: float) -> None:
        """Profile hstream-0.20 (Probe.hs:111-137): Ping; no Ack within the round trip →
        PingReq through one alive member; none within another round trip → Suspect; still
        no Ack (direct or indirect) when the probe interval ends → Confirm, if the
        member's incarnation has not changed meanwhile. No suspicion timer anywhere."""
        loop = asyncio.get_running_loop()
        rtt = self.config.roundtrip_timeout
        incarnation = target.incarnation
        if await self._ping(target.node, rtt):
            return
        helpers = [r.node for r in self._listed() if r.node.id != target.node.id]
        helpers = self._rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        timeout = max(deadline - loop.time(), rtt)
        indirect = [
            asyncio.ensure_future(self._ping_req(helper, target.node, timeout))
            for helper in helpers
        ]
        try:
            if await _any_true(indirect, rtt):
                return
            self._suspect_unanswered(target, len(helpers))
            if await _any_true(indirect, deadline - loop.time()):
                return
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            for task in indirect:
                task.cancel()
        current = self._table.get(target.node.id)
        if current is None or current.state is MemberState.DEAD:
            return
        if current.incarnation != incarnation or "never-confirm" in self.config.defects:
            return
        log.info(
            "node %d: no ack from %d within the probe interval; confirming it dead",
            self._self.id,
            target.node.id,
        )
        self._apply_state("confirm", incarnation, current.node)

    async def _gossip_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gossip_interval)
            if not len(self._broadcasts):
                continue
            peers = [r.node for r in self._listed()]
            chosen = self._rng.sample(peers, min(self.config.fanout, len(peers)))
            await asyncio.gather(*(self._send_gossip(peer) for peer in chosen))

    async def _send_gossip(self, peer: NodeAddress) -> None:
        request = HStreamGossip_pb2.Gossip(msg=self._piggyback(self._claims_about(peer.id)))
        try:
            await self._node_stub(peer).SendGossip(request, timeout=self.config.roundtrip_timeout)
        except grpc.aio.AioRpcError:
            pass  # gossip is best effort; the probe decides about failures

    async def _reconnect_loop(self) -> None:
        if self.profile.reconnect_one_random:
            await self._reconnect_one_at_a_time()
            return
        while True:
            await asyncio.sleep(self.config.reconnect_interval)
            for record in self._table.in_state(MemberState.DEAD):
                await self._reconnect(record)

    async def _reconnect(self, record: MemberRecord) -> None:
        rtt = self.config.roundtrip_timeout
        try:
            await self._node_stub(record.node).SendReconnect(HStreamGossip_pb2.Empty(), timeout=rtt)
        except grpc.aio.AioRpcError:
            return
        # It answers: tell it that it is considered dead (it refutes with a higher
        # incarnation, which rides back on the Ack) and who is asking.
        await self._ping(record.node, rtt)

    async def _reconnect_one_at_a_time(self) -> None:
        """hstream-0.20 (Reconnect.hs:36-57): one random dead member per attempt, an attempt
        as soon as one is dead, the interval slept after each attempt, and none while the
        dead outnumber the alive (this node included)."""
        while True:
            dead = self._table.in_state(MemberState.DEAD)
            alive = 1 + len(self._table.in_state(MemberState.ALIVE))
            if not dead or alive < len(dead):
                # The real loop blocks (STM) on an empty dead list and spins on the refusal;
                # a short poll gives the same moment of the next attempt.
                await asyncio.sleep(min(0.1, self.config.probe_interval))
                continue
            await self._reconnect(self._rng.choice(dead))
            await asyncio.sleep(self.config.reconnect_interval)

    # ----------------------------------------------------------------- server side
    def _join_response(self) -> HStreamGossip_pb2.JoinResp:
        members = [self._self_described()]
        for record in self._listed():
            members.append(wire.with_state(record.node, record.state, record.incarnation))
        return HStreamGossip_pb2.JoinResp(epoch=self._table.epoch, members=members)

    def handle_join(
        self, server_node: HStreamInternal_pb2.ServerNode
    ) -> HStreamGossip_pb2.JoinResp:
        """Raises _Refused with the status the real server sends."""
        if not self._ready:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, wire.CLUSTER_NOT_READY)
        node = wire.from_server_node(server_node)
        if node.id == self._self.id:
            raise _Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f"Duplicate node id join not allowed: {node.id} is the id of the seed itself",
            )
        incarnation = _incarnation_of(server_node) or 0
        known = self._table.get(node.id)
        if known is not None:
            same_place = (known.node.gossip_host, known.node.gossip_port) == (
                node.gossip_host,
                node.gossip_port,
            )
            # Two live processes cannot listen on one address: a join from the address of
            # a live member is that member restarted; from elsewhere, it is a duplicate id.
            # The real server refuses both (profile hstream-0.20, Server/Handlers.hs:163).
            if known.state is MemberState.ALIVE and (
                not same_place or self.profile.refuse_alive_rejoin
            ):
                log.critical(
                    "node %d: DuplicateNodeId: refused the join of node %d, alive here at %s",
                    self._self.id,
                    node.id,
                    _address(known.node.gossip_host, known.node.gossip_port),
                )
                raise _Refused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"Duplicate node id join not allowed: {node.id} is alive at "
                    f"{_address(known.node.gossip_host, known.node.gossip_port)}",
                )
            incarnation = max(incarnation, known.incarnation + 1)
        self._apply_state("alive", incarnation, node)
        return self._join_response()

    async def admin(self, command: str) -> str:
        """SendAdminCommand for `server init`, `server ready`, `server status`."""
        words = command.split()
        if words[:1] == ["server"]:
            words = words[1:]
        if words == ["init"]:
            if self._is_seed and self._other_seeds and not self._inited and not self._ready:
                if not any(t.get_name() == "user-init" for t in self._tasks):
                    self._spawn(self._user_init()).set_name("user-init")
            return _admin_result("plain", "Server successfully received init signal")
        if words == ["ready"]:
            if self._ready:
                return _admin_result("plain", "Cluster is ready")
            return _admin_result("error", "Cluster is not ready!")
        if words == ["status"]:
            states = self.node_states()
            if self.profile.status_self_running:
                # Utils.hs:331-342: the member list (self included, as alive) overwrites
                # the entry that says Starting.
                states = [(node, "Running" if node == self._self else s) for node, s in states]
            rows = [[str(node.id), state, _address(node.host, node.port)] for node, state in states]
            headers = ["Node ID", "State", "Address"]
            return _admin_result("table", {"headers": headers, "rows": rows})
        if self.profile.admin_parse_error_internal:
            raise UnknownAdminCommand(command)
        return _admin_result(
            "error",
            f"unknown admin command {command!r}; the gossip layer answers "
            "'server init', 'server ready' and 'server status'",
        )

    def cli_cluster(self) -> HStreamGossip_pb2.Cluster:
        members = [self._self_described()]
        members += [wire.with_state(r.node, r.state, r.incarnation) for r in self._table.records()]
        return HStreamGossip_pb2.Cluster(members=members)


def _sender_of(messages: Sequence[HStreamGossip_pb2.Message]) -> int | None:
    """The id of a Ping's sender, from the Alive about itself it opens with."""
    if not messages or messages[0].WhichOneof("content") != "state":
        return None
    state = messages[0].state
    if state.WhichOneof("content") != "alive":
        return None
    report = state.alive
    return report.reportee.id if report.reportee.id == report.reporter.id else None


async def _any_true(tasks: Sequence[asyncio.Future[bool]], timeout: float) -> bool:
    """True as soon as one task returns True; False once all returned False or the
    timeout passed (the tasks keep running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while True:
        if any(_returned_true(t) for t in tasks):
            return True
        remaining = deadline - loop.time()
        if not pending or remaining <= 0:
            return False
        _, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )


def _returned_true(task: asyncio.Future[bool]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None and task.result()


def _admin_result(kind: str, content: Any) -> str:
    return json.dumps({"type": kind, "content": content})


class _Stopped(grpc.aio.AioRpcError):
    def __init__(self, details: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
        )


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Servicer(HStreamGossip_pb2_grpc.HStreamGossipServicer):
    def __init__(self, node: GossipNode) -> None:
        self._node = node

    async def SendBootstrapPing(self, request, context):  # type: ignore[no-untyped-def]
        node = self._node
        if node.is_ready():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, wire.CLUSTER_READY)
        if node._inited and not request.ignoreInitedErr:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, wire.CLUSTER_INITED)
        return node._self_described()

    async def SendPing(self, request, context):  # type: ignore[no-untyped-def]
        node = self._node
        node._receive(request.msg)
        # a sender this node thinks suspect or dead hears so in the Ack, and can refute
        sender = _sender_of(request.msg)
        claims = node._claims_about(sender) if sender is not None else []
        return HStreamGossip_pb2.Ack(msg=node._piggyback(claims))

    async def SendPingReq(self, request, context):  # type: ignore[no-untyped-def]
        node = self._node
        if not request.HasField("target"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PingReq without a target")
        node._receive(request.msg)
        target = wire.from_server_node(request.target)
        acked = await node._ping(target, node.config.roundtrip_timeout)
        return HStreamGossip_pb2.PingReqResp(acked=acked, msg=node._piggyback())

    async def SendJoin(self, request, context):  # type: ignore[no-untyped-def]
        if not request.HasField("new"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "JoinReq without a node")
        try:
            return self._node.handle_join(request.new)
        except _Refused as refused:
            await context.abort(refused.code, refused.details)

    async def SendGossip(self, request, context):  # type: ignore[no-untyped-def]
        self._node._receive(request.msg)
        return HStreamGossip_pb2.Empty()

    async def SendReconnect(self, request, context):  # type: ignore[no-untyped-def]
        return HStreamGossip_pb2.Empty()

    async def CliJoin(self, request, context):  # type: ignore[no-untyped-def]
        node = self._node
        host = request.host.decode(errors="replace")
        try:
            response = await node._stub(host, request.port).SendJoin(
                HStreamGossip_pb2.JoinReq(new=node._self_described()),
                timeout=max(1.0, 4 * node.config.roundtrip_timeout),
            )
        except grpc.aio.AioRpcError as error:
            await context.abort(
                error.code(), f"join through {host}:{request.port}: {error.details()}"
            )
        node._accept_join(response, _address(host, request.port))
        return response

    async def CliCluster(self, request, context):  # type: ignore[no-untyped-def]
        return self._node.cli_cluster()

    async def CliUserEvent(self, request, context):  # type: ignore[no-untyped-def]
        self._node.broadcast_event(request.name, request.payload)
        return HStreamGossip_pb2.Empty()

    async def CliGetSeenEvents(self, request, context):  # type: ignore[no-untyped-def]
        events = [
            HStreamGossip_pb2.UserEvent(name=n, payload=p) for n, p in self._node.seen_events()
        ]
        return HStreamGossip_pb2.SeenEvents(events=events)
