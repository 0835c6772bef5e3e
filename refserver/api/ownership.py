"""Which node owns a resource (subscription, shard reader, shard, ...), persisted.

Protocol §3: the first lookup stores the owner under `owners/{kind}/{id}` ({"nodeId"});
later lookups return it while that node is alive, otherwise they re-hash over the alive
members (refserver.routing.owner) and store the new owner with compare-and-set, so two
nodes racing on the first lookup or on a move agree on one answer.

The stale-owner defect hashes over the member set this node first saw and returns a
stored owner even when it is dead, so resources never move off dead nodes.
"""

from __future__ import annotations

import json

import grpc

from refserver import errors, routing
from refserver.api.catalog import store_unavailable
from refserver.errors import HStreamError
from refserver.membership import Membership, MemberState, NodeAddress
from refserver.protos import Store_pb2 as store_pb
from refserver.protos import Store_pb2_grpc

# Bounds the compare-and-set retries when nodes keep racing on one owner record.
MAX_CAS_ATTEMPTS = 8


def owner_key(kind: str, resource_id: str) -> str:
    return f"owners/{kind}/{resource_id}"


class Ownership:
    def __init__(
        self,
        store: Store_pb2_grpc.StoreStub,
        membership: Membership,
        defects: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._membership = membership
        self._stale = "stale-owner" in defects
        self._frozen_members: list[NodeAddress] | None = None

    def _candidates(self) -> list[NodeAddress]:
        if self._stale:
            # Frozen at the first lookup once the cluster is ready: later joins, deaths
            # and recoveries are all ignored.
            if self._frozen_members is None and self._membership.is_ready():
                self._frozen_members = list(self._membership.alive())
            if self._frozen_members is not None:
                return self._frozen_members
        return self._membership.alive()

    def hashed_owner(self, kind: str, resource_id: str) -> NodeAddress:
        """The owner by hashing alone (for resources whose owner is not persisted)."""
        if not self._membership.is_ready():
            # Before `server init` the member set is incomplete: an owner chosen (and
            # stored) now would pile every resource onto the first seed asked.
            raise HStreamError(
                grpc.StatusCode.UNAVAILABLE,
                0,
                f"server {self._membership.self_node.id}: the cluster is not ready; "
                "send `server init` (SendAdminCommand) to a seed and retry",
            )
        try:
            return routing.owner(f"{kind}/{resource_id}", self._candidates())
        except routing.NoAliveNode as error:
            raise HStreamError(grpc.StatusCode.UNAVAILABLE, 0, str(error)) from None

    def _known(self, node_id: int) -> NodeAddress | None:
        """The address of `node_id` if it may own resources (alive; any when stale)."""
        member = self._membership.members().get(node_id)
        if member is None:
            if self._stale and self._frozen_members is not None:
                return next((n for n in self._frozen_members if n.id == node_id), None)
            return None
        if self._stale or member.state is MemberState.ALIVE:
            return member.node
        return None

    async def owner(self, kind: str, resource_id: str) -> NodeAddress:
        key = owner_key(kind, resource_id)
        try:
            for _ in range(MAX_CAS_ATTEMPTS):
                found = await self._store.MetaGet(store_pb.MetaKey(key=key))
                if found.found:
                    stored = self._known(int(json.loads(found.value)["nodeId"]))
                    if stored is not None:
                        return stored
                chosen = self.hashed_owner(kind, resource_id)
                put = await self._store.MetaPut(
                    store_pb.MetaPutReq(
                        key=key,
                        value=json.dumps({"nodeId": chosen.id}).encode(),
                        expected_version=found.version if found.found else 0,
                    )
                )
                if put.ok:
                    return chosen
        except grpc.RpcError as error:
            raise store_unavailable(
                f"looking up the owner of {kind} {resource_id}", error
            ) from None
        raise HStreamError(
            grpc.StatusCode.ABORTED,
            0,
            f"owner of {kind} {resource_id} kept changing during {MAX_CAS_ATTEMPTS} attempts; "
            "retry the lookup",
        )

    async def check_owner(
        self, kind: str, resource_id: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Raise FAILED_PRECONDITION 800 (WrongServer) unless this node owns the resource."""
        owner = await self.owner(kind, resource_id)
        me = self._membership.self_node
        if owner.id != me.id:
            raise HStreamError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors.WRONG_SERVER,
                f"{kind} {resource_id} is owned by server {owner.id} "
                f"({owner.host}:{owner.port}), not by server {me.id}; look it up and retry there",
                extra={"id": owner.id, "host": owner.host, "port": owner.port},
            )

    async def forget(self, kind: str, resource_id: str) -> None:
        """Drop the stored owner when the resource is deleted."""
        try:
            await self._store.MetaDelete(
                store_pb.MetaDeleteReq(key=owner_key(kind, resource_id), expected_version=-1)
            )
        except grpc.RpcError as error:
            raise store_unavailable(f"deleting the owner of {kind} {resource_id}", error) from None
