"""One reference server node: the client API on --port, gossip on --internal-port, both
over one store connection.

Start order: store reachable (Ping) → gossip and API servers listening → gossip joins
the cluster (a seed of a multi-seed cluster returns at once and waits for `server init`,
which reaches it through SendAdminCommand on the API port) → subscriptions and HStream
IO connectors start → "Server is started on port N" is logged. `stop()` undoes it in
reverse and is idempotent.

Under profile hstream-0.20 the line ("..., waiting for cluster to get ready", as
app/server.hs:207 prints it) comes as soon as both servers listen, before the join; a
join then refused (DuplicateNodeId) or failed still ends the node, after the line.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import grpc

from refserver.api.catalog import Catalog
from refserver.api.cluster import ClusterService
from refserver.api.ownership import Ownership
from refserver.api.readers import ReaderService
from refserver.api.servicer import build_handler
from refserver.api.shard_reads import ShardLog, TailSignals
from refserver.api.streams import StreamService
from refserver.api.subscriptions import SubscriptionService
from refserver.auth import TokenAuthInterceptor
from refserver.gossip.config import GossipConfig
from refserver.gossip.node import GossipNode
from refserver.io.catalog import ConnectorCatalog
from refserver.io.service import ConnectorService
from refserver.membership import NodeAddress
from refserver.profiles import PROTOCOL, Profile
from refserver.protos import Store_pb2, Store_pb2_grpc

log = logging.getLogger("refserver")

STORE_CHECK_SECONDS = 5.0
# Batches up to --max-record-size plus read answers of many batches; headroom over both.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# Every store call gets this deadline unless it sets one: a paused or partitioned store
# then turns into UNAVAILABLE answers instead of RPCs that hang forever.
STORE_CALL_SECONDS = 10.0


class StoreDeadline(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        if client_call_details.timeout is None:
            client_call_details = client_call_details._replace(timeout=STORE_CALL_SECONDS)
        return await continuation(client_call_details, request)


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class NodeSettings:
    server_id: int
    port: int
    internal_port: int
    bind_address: str
    advertised_address: str
    advertised_port: int
    gossip_address: str
    advertised_gossip_port: int
    store: str
    tokens: frozenset[str]
    defects: frozenset[str]
    max_record_size: int
    gossip: GossipConfig
    connectors: ConnectorCatalog = field(default_factory=ConnectorCatalog)
    log_level: str = "info"
    profile: Profile = PROTOCOL
    # gossip flags given on the command line (the real server would ignore them)
    gossip_flags: tuple[str, ...] = ()

    @property
    def address(self) -> NodeAddress:
        return self.gossip.self_node


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail with one clear line instead of gRPC's C-core log when a port is taken."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
            0
        ]
    except socket.gaierror as error:
        raise StartupError(f"cannot resolve --bind-address {host}: {error}") from None
    with socket.socket(family, kind, proto) as probe:
        # gRPC sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free, as for gRPC.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as error:
            raise StartupError(
                f"cannot listen on {host}:{port} ({flag}): {error.strerror}; pick a free port"
            ) from None


def _listen(server: grpc.aio.Server, host: str, port: int, flag: str) -> None:
    check_port_free(host, port, flag)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise StartupError(f"cannot listen on {host}:{port} ({flag}); pick a free port")


class RefServerNode:
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self._store_channel: grpc.aio.Channel | None = None
        self._api_server: grpc.aio.Server | None = None
        self._gossip_server: grpc.aio.Server | None = None
        self._gossip: GossipNode | None = None
        self._subscriptions: SubscriptionService | None = None
        self._connectors: ConnectorService | None = None
        self._stopped = False

    async def _check_store(self, stub: Store_pb2_grpc.StoreStub) -> None:
        try:
            await stub.Ping(Store_pb2.Empty(), timeout=STORE_CHECK_SECONDS, wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise StartupError(
                f"the store at --store {self.settings.store} is not reachable within "
                f"{STORE_CHECK_SECONDS:g} s ({error.code().name}); start it first "
                "(python -m refserver.store) or fix the address"
            ) from None

    async def start(self) -> None:
        s = self.settings
        profile = s.profile
        if profile is not PROTOCOL:
            log.info("profile %s: %s", profile.name, ", ".join(profile.mirrors()))
            if s.gossip_flags:
                log.warning(
                    "profile %s: gossip flags %s are applied, though hstream-server ignores "
                    "them and always runs its defaults (app/server.hs:146)",
                    profile.name,
                    " ".join(s.gossip_flags),
                )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        # Calls fail fast (UNAVAILABLE) while the store is down; a short reconnect
        # backoff makes the node serve again within about half a second of its return.
        store_options = [
            *options,
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        self._store_channel = grpc.aio.insecure_channel(
            s.store, options=store_options, interceptors=[StoreDeadline()]
        )
        store = Store_pb2_grpc.StoreStub(self._store_channel)
        await self._check_store(store)

        gossip = self._gossip = GossipNode(s.gossip)
        # Without so_reuseport=0 gRPC lets a second process share the port silently.
        self._gossip_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        gossip.add_to_server(self._gossip_server)
        _listen(self._gossip_server, s.bind_address, s.internal_port, "--internal-port")

        signals = TailSignals()
        shard_log = ShardLog(store, s.defects, signals)
        ownership = Ownership(store, gossip, s.defects)
        self._subscriptions = SubscriptionService(
            store, gossip, ownership, s.defects, s.address, profile
        )
        self._connectors = ConnectorService(
            store, gossip, ownership, s.defects, s.address, s.connectors
        )
        components = [
            StreamService(
                store, shard_log, signals, s.defects, s.max_record_size, ownership, profile
            ),
            ReaderService(Catalog(store), shard_log, ownership, profile),
            ClusterService(gossip, ownership, gossip),
            self._subscriptions,
            self._connectors,
        ]
        interceptors = [TokenAuthInterceptor(s.tokens, profile)] if s.tokens else []
        self._api_server = grpc.aio.server(
            interceptors=interceptors, options=[*options, ("grpc.so_reuseport", 0)]
        )
        self._api_server.add_generic_rpc_handlers([build_handler(components)])
        _listen(self._api_server, s.bind_address, s.port, "--port")

        await self._gossip_server.start()
        await self._api_server.start()
        if profile.ready_line_before_join:
            log.info("Server is started on port %d, waiting for cluster to get ready", s.port)
        await gossip.start()
        await self._subscriptions.start()
        await self._connectors.start()
        if not profile.ready_line_before_join:
            log.info("Server is started on port %d", s.port)

    async def leave(self) -> None:
        """A graceful stop's first step: tell the cluster this node leaves (GossipNode.leave)
        while everything still runs; `stop()` follows."""
        if self._gossip is not None and not self._stopped:
            await self._gossip.leave()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._api_server is not None:
            await self._api_server.stop(grace=1.0)
        if self._connectors is not None:
            await self._connectors.stop()
        if self._subscriptions is not None:
            await self._subscriptions.stop()
        if self._gossip is not None:
            await self._gossip.stop()
        if self._gossip_server is not None:
            await self._gossip_server.stop(grace=None)
        if self._store_channel is not None:
            await self._store_channel.close()


async def run_until_signalled(node: RefServerNode, stop: asyncio.Event) -> None:
    try:
        await node.start()
        await stop.wait()
        log.info("Server is stopping")
        await node.leave()
    finally:
        await node.stop()
