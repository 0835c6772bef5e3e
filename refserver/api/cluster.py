"""Cluster RPCs (protocol §3): Echo, DescribeCluster, the lookups, SendAdminCommand."""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver.api.ownership import Ownership
from refserver.api.readers import READER_KIND
from refserver.errors import UnknownAdminCommand
from refserver.membership import Membership, MemberState, NodeAddress

PROTOCOL_VERSION = "0.1.0"
# LookupResource resource types → ownership kinds. ResShard ids are decimal shard ids
# (the Erlang client's discovery), so they land on the same owner as LookupShard.
RESOURCE_KINDS = {
    api.ResourceType.Value("ResStream"): "stream",
    api.ResourceType.Value("ResSubscription"): "subscription",
    api.ResourceType.Value("ResShard"): "shard",
    api.ResourceType.Value("ResShardReader"): READER_KIND,
    api.ResourceType.Value("ResConnector"): "connector",
    api.ResourceType.Value("ResQuery"): "query",
    api.ResourceType.Value("ResView"): "view",
}


class AdminCommands(Protocol):
    async def admin(self, command: str) -> str:
        """The result JSON; raises UnknownAdminCommand under profile hstream-0.20."""
        ...


def server_node(node: NodeAddress) -> api.ServerNode:
    return api.ServerNode(id=node.id, host=node.host, port=node.port)


class ClusterService:
    def __init__(self, membership: Membership, ownership: Ownership, admin: AdminCommands) -> None:
        self.membership = membership
        self.ownership = ownership
        self.admin = admin
        self.started = time.monotonic()

    async def Echo(
        self, request: api.EchoRequest, context: grpc.aio.ServicerContext
    ) -> api.EchoResponse:
        return api.EchoResponse(msg=request.msg)

    def node_states(self) -> list[tuple[NodeAddress, str]]:
        """Self first ("Running" once the cluster is ready, else "Starting"), then alive
        peers "Running" and confirmed-dead ones "Dead"; suspects are in neither (§3)."""
        states = getattr(self.membership, "node_states", None)
        if callable(states):
            return list(states())
        me = self.membership.self_node
        found = [(me, "Running" if self.membership.is_ready() else "Starting")]
        for member in sorted(self.membership.members().values(), key=lambda m: m.node.id):
            if member.node.id == me.id:
                continue
            if member.state is MemberState.ALIVE:
                found.append((member.node, "Running"))
            elif member.state is MemberState.DEAD:
                found.append((member.node, "Dead"))
        return found

    async def DescribeCluster(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api.DescribeClusterResponse:
        states = self.node_states()
        return api.DescribeClusterResponse(
            protocolVersion=PROTOCOL_VERSION,
            serverNodes=[
                server_node(node) for node, state in states if state in ("Running", "Starting")
            ],
            serverNodesStatus=[
                api.ServerNodeStatus(node=server_node(node), state=api.NodeState.Value(state))
                for node, state in states
            ],
            clusterUpTime=int(time.monotonic() - self.started),
        )

    async def LookupShard(
        self, request: api.LookupShardRequest, context: grpc.aio.ServicerContext
    ) -> api.LookupShardResponse:
        owner = await self.ownership.owner("shard", str(request.shardId))
        return api.LookupShardResponse(shardId=request.shardId, serverNode=server_node(owner))

    async def LookupKey(
        self, request: api.LookupKeyRequest, context: grpc.aio.ServicerContext
    ) -> api.ServerNode:
        # Keys are unbounded in number: hashed, not persisted.
        return server_node(self.ownership.hashed_owner("key", request.partitionKey))

    async def LookupResource(
        self, request: api.LookupResourceRequest, context: grpc.aio.ServicerContext
    ) -> api.ServerNode:
        kind = RESOURCE_KINDS.get(request.resType, f"resource-{request.resType}")
        return server_node(await self.ownership.owner(kind, request.resId))

    async def LookupSubscription(
        self, request: api.LookupSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> api.LookupSubscriptionResponse:
        owner = await self.ownership.owner("subscription", request.subscriptionId)
        return api.LookupSubscriptionResponse(
            subscriptionId=request.subscriptionId, serverNode=server_node(owner)
        )

    async def LookupShardReader(
        self, request: api.LookupShardReaderRequest, context: grpc.aio.ServicerContext
    ) -> api.LookupShardReaderResponse:
        owner = await self.ownership.owner(READER_KIND, request.readerId)
        return api.LookupShardReaderResponse(
            readerId=request.readerId, serverNode=server_node(owner)
        )

    async def SendAdminCommand(
        self, request: api.AdminCommandRequest, context: grpc.aio.ServicerContext
    ) -> api.AdminCommandResponse:
        try:
            result = await self.admin.admin(request.command)
        except UnknownAdminCommand as error:
            # Profile hstream-0.20: the parse failure is an ioError, which the default
            # handlers turn into INTERNAL with its text (Handler/Admin.hs:114-146,
            # Exception.hs:94-98, hstream-admin Server/Types.hs:437-441).
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "Parsing admin command error: invalid argument "
                f"(Invalid argument `{error.command}')",
            )
        return api.AdminCommandResponse(result=result)
