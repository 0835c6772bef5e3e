"""The subscription RPCs of hstream.server.HStreamApi, StreamingFetch included.

The API servicer delegates to `SubscriptionService`; each method takes the request and
the grpc.aio context and returns the response (StreamingFetch yields them). Errors are
HStreamDB's JSON status messages (refserver.errors). Which node serves a subscription is
decided by lookups; StreamingFetch itself does not check ownership (real HStreamDB does
not either, §3), but the delivery state lives on whichever node a consumer reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.api.names import valid_name
from refserver.api.subscription_delivery import Consumer, SubscriptionDelivery
from refserver.api.subscription_progress import Position
from refserver.api.subscription_storage import (
    EARLIEST,
    LATEST,
    CheckpointStore,
    MemoryCheckpoints,
    StoredCheckpoints,
    SubscriptionRecord,
    list_subscriptions,
    load_subscription,
    require_subscription,
    store_unavailable,
    subscription_key,
)
from refserver.errors import HStreamError
from refserver.membership import Membership, NodeAddress
from refserver.profiles import PROTOCOL, Profile
from refserver.protos import Store_pb2, Store_pb2_grpc

log = logging.getLogger(__name__)

ASSIGNMENT_SECONDS = 1.0
REDELIVERY_SECONDS = 0.1


class Ownership(Protocol):
    async def owner(self, kind: str, resource_id: str) -> NodeAddress: ...

    async def check_owner(
        self, kind: str, resource_id: str, context: grpc.aio.ServicerContext
    ) -> None: ...


class SubscriptionService:
    def __init__(
        self,
        store: Store_pb2_grpc.StoreStub,
        membership: Membership,
        ownership: Ownership,
        defects: frozenset[str],
        node: NodeAddress,
        profile: Profile = PROTOCOL,
    ) -> None:
        self._store = store
        self._profile = profile
        self._membership = membership
        self._ownership = ownership
        self._defects = defects
        self._node = node
        self._checkpoints: CheckpointStore = (
            MemoryCheckpoints() if "lost-checkpoint" in defects else StoredCheckpoints(store)
        )
        self._deliveries: dict[str, SubscriptionDelivery] = {}
        self._opening: dict[str, asyncio.Task[SubscriptionDelivery]] = {}
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._assignment_loop(), name="subscription assignment"),
            asyncio.create_task(self._redelivery_loop(), name="subscription redelivery"),
        ]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        deliveries = list(self._deliveries.values())
        self._deliveries.clear()
        await asyncio.gather(*(d.close() for d in deliveries), return_exceptions=True)

    async def _assignment_loop(self) -> None:
        while True:
            await asyncio.sleep(ASSIGNMENT_SECONDS)
            for delivery in list(self._deliveries.values()):
                delivery.rebalance()

    async def _redelivery_loop(self) -> None:
        while True:
            await asyncio.sleep(REDELIVERY_SECONDS)
            for delivery in list(self._deliveries.values()):
                delivery.redeliver_expired()

    # Unary RPCs ------------------------------------------------------------------------

    async def CreateSubscription(
        self, request: api.Subscription, context: grpc.aio.ServicerContext
    ) -> api.Subscription:
        try:
            return await self._create(request)
        except HStreamError as error:
            await errors.abort(context, error)

    async def _create(self, request: api.Subscription) -> api.Subscription:
        # HStreamDB's resource-name rule (the same as for streams).
        if not valid_name(request.subscriptionId, self._profile.unicode_names):
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_SUBSCRIPTION_ID,
                f"invalid subscription id {request.subscriptionId!r}: use 1-255 characters, "
                "a letter first, then letters, digits, '-' or '_'",
            )
        try:
            stream = await self._store.MetaGet(
                Store_pb2.MetaKey(key=f"streams/{request.streamName}")
            )
            if not stream.found:
                raise HStreamError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors.NON_EXISTENT_STREAM,
                    f"stream {request.streamName!r} does not exist; create the stream "
                    "before subscribing to it",
                )
            shards = _shards_of(request.streamName, stream.value)
            start_lsns = {}
            for shard in shards:
                if request.offset == LATEST:
                    tail = await self._store.Tail(Store_pb2.LogReq(log_id=shard))
                    start_lsns[shard] = tail.lsn + 1
                else:
                    start_lsns[shard] = 1
            record = SubscriptionRecord(
                subscription_id=request.subscriptionId,
                stream_name=request.streamName,
                ack_timeout_seconds=request.ackTimeoutSeconds,
                max_unacked_records=request.maxUnackedRecords,
                offset=request.offset if request.offset in (EARLIEST, LATEST) else LATEST,
                creation_time_ms=int(time.time() * 1000),
                start_lsns=start_lsns,
            )
            put = await self._store.MetaPut(
                Store_pb2.MetaPutReq(
                    key=subscription_key(record.subscription_id),
                    value=record.to_json(),
                    expected_version=0,
                )
            )
        except grpc.RpcError as error:
            raise store_unavailable(
                f"creating subscription {request.subscriptionId!r}", error
            ) from error
        if not put.ok:
            raise HStreamError(
                grpc.StatusCode.ALREADY_EXISTS,
                errors.SUBSCRIPTION_EXISTS,
                f"subscription {request.subscriptionId!r} already exists; delete it first "
                "or choose another id",
            )
        return record.to_proto()

    async def GetSubscription(
        self, request: api.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> api.GetSubscriptionResponse:
        try:
            await self._ownership.check_owner("subscription", request.id, context)
            record = await require_subscription(self._store, request.id)
            delivery = self._deliveries.get(request.id)
            if delivery is not None:
                positions = delivery.checkpoints()
            else:
                stored = await self._checkpoints.load(request.id)
                positions = {
                    shard: max(stored.get(shard, _start(lsn)), _start(lsn))
                    for shard, lsn in record.start_lsns.items()
                }
        except grpc.RpcError as error:
            await errors.abort(context, store_unavailable("reading checkpoints", error))
        except HStreamError as error:
            await errors.abort(context, error)
        return api.GetSubscriptionResponse(
            subscription=record.to_proto(),
            offsets=[
                api.SubscriptionOffset(shardId=shard, batchId=position.lsn)
                for shard, position in sorted(positions.items())
            ],
        )

    async def ListSubscriptions(
        self, request: api.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListSubscriptionsResponse:
        return await self._list(context, prefix="")

    async def ListSubscriptionsWithPrefix(
        self, request: api.ListSubscriptionsWithPrefixRequest, context: grpc.aio.ServicerContext
    ) -> api.ListSubscriptionsResponse:
        return await self._list(context, prefix=request.prefix)

    async def _list(
        self, context: grpc.aio.ServicerContext, prefix: str
    ) -> api.ListSubscriptionsResponse:
        try:
            found = await list_subscriptions(self._store)
        except HStreamError as error:
            await errors.abort(context, error)
        return api.ListSubscriptionsResponse(
            subscription=[r.to_proto() for r in found if r.subscription_id.startswith(prefix)]
        )

    async def CheckSubscriptionExist(
        self, request: api.CheckSubscriptionExistRequest, context: grpc.aio.ServicerContext
    ) -> api.CheckSubscriptionExistResponse:
        try:
            record = await load_subscription(self._store, request.subscriptionId)
        except HStreamError as error:
            await errors.abort(context, error)
        return api.CheckSubscriptionExistResponse(exists=record is not None)

    async def DeleteSubscription(
        self, request: api.DeleteSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        try:
            await self._ownership.check_owner("subscription", request.subscriptionId, context)
            await self._delete(request.subscriptionId, request.force)
        except HStreamError as error:
            await errors.abort(context, error)
        return empty_pb2.Empty()

    async def _delete(self, subscription_id: str, force: bool) -> None:
        await require_subscription(self._store, subscription_id)
        delivery = await self._settled(subscription_id)
        if delivery is not None and delivery.consumers and not force:
            raise HStreamError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors.SUBSCRIPTION_HAS_CONSUMERS,
                f"subscription {subscription_id!r} has {len(delivery.consumers)} active "
                f"consumer(s) ({', '.join(delivery.consumers)}); stop them or delete with force",
            )
        if delivery is not None:
            self._deliveries.pop(subscription_id, None)
            await delivery.close()
        try:
            await self._store.MetaDelete(
                Store_pb2.MetaDeleteReq(key=subscription_key(subscription_id), expected_version=-1)
            )
            await self._checkpoints.delete(subscription_id)
        except grpc.RpcError as error:
            raise store_unavailable(f"deleting subscription {subscription_id!r}", error) from error

    async def ListConsumers(
        self, request: api.ListConsumersRequest, context: grpc.aio.ServicerContext
    ) -> api.ListConsumersResponse:
        try:
            await self._ownership.check_owner("subscription", request.subscriptionId, context)
            await require_subscription(self._store, request.subscriptionId)
        except HStreamError as error:
            await errors.abort(context, error)
        delivery = self._deliveries.get(request.subscriptionId)
        consumers = list(delivery.consumers.values()) if delivery else []
        return api.ListConsumersResponse(
            consumers=[
                api.Consumer(name=c.name, uri=c.uri, userAgent=c.user_agent) for c in consumers
            ]
        )

    # StreamingFetch --------------------------------------------------------------------

    async def StreamingFetch(
        self,
        request_iterator: AsyncIterator[api.StreamingFetchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[api.StreamingFetchResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return
        try:
            delivery = await self._open(first.subscriptionId)
            consumer = delivery.join(first.consumerName, context.peer(), _user_agent(context))
        except HStreamError as error:
            await errors.abort(context, error)
        log.info(
            "consumer %r joined subscription %r from %s",
            consumer.name,
            delivery.subscription_id,
            consumer.uri,
        )
        acks = asyncio.create_task(self._read_acks(requests, delivery, consumer))
        try:
            while True:
                response = await consumer.outbox.get()
                if response is None:
                    return
                yield response
        finally:
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks
            delivery.leave(consumer)
            log.info("consumer %r left subscription %r", consumer.name, delivery.subscription_id)

    async def _read_acks(
        self,
        requests: AsyncIterator[api.StreamingFetchRequest],
        delivery: SubscriptionDelivery,
        consumer: Consumer,
    ) -> None:
        try:
            async for request in requests:
                delivery.ack(request.ackIds)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            log.info("consumer %r request stream failed: %s", consumer.name, error)
        # The client closed its side (or the call broke): the consumer is gone.
        consumer.end()

    async def _open(self, subscription_id: str) -> SubscriptionDelivery:
        """This node's one delivery state for a subscription, loaded from the store if
        needed. Consumers arriving together (as they do after an owner change) share it, as
        HStreamDB keeps one subscription context per server and a StreamingFetch arriving
        while it is initialised waits for it (hstream/src/HStream/Server/Core/Subscription.hs,
        initSub)."""
        while True:
            delivery = await self._settled(subscription_id)
            if delivery is None:
                break
            if delivery.consumers:
                return delivery
            # An idle state may be stale: another node may have served the subscription
            # since (its owner moved while this node was unreachable), or it may have been
            # deleted and created again elsewhere. Keep it only if the stored subscription
            # is the same and no stored checkpoint is ahead of it.
            record = await load_subscription(self._store, subscription_id)
            stored = await self._load_checkpoints(subscription_id)
            if self._deliveries.get(subscription_id) is not delivery or delivery.consumers:
                # Joined, or replaced by a fresh state, while the store was read: look
                # again. Going on with this one would load a second state next to the
                # fresh one, and its consumers would be served by two states at once.
                continue
            mine = delivery.checkpoints()
            stale = record != delivery.subscription or any(
                position > mine.get(shard, position) for shard, position in stored.items()
            )
            if not stale:
                return delivery
            del self._deliveries[subscription_id]
            await delivery.close()
            # Another consumer may have loaded a fresh state meanwhile: look again.
        task = self._opening.get(subscription_id)
        if task is None:
            task = asyncio.create_task(self._load(subscription_id))
            self._opening[subscription_id] = task
            task.add_done_callback(lambda _: self._opening.pop(subscription_id, None))
        return await asyncio.shield(task)

    async def _settled(self, subscription_id: str) -> SubscriptionDelivery | None:
        opening = self._opening.get(subscription_id)
        if opening is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(opening)
        return self._deliveries.get(subscription_id)

    async def _load(self, subscription_id: str) -> SubscriptionDelivery:
        record = await require_subscription(self._store, subscription_id)
        checkpoints = await self._load_checkpoints(subscription_id)
        delivery = SubscriptionDelivery(
            record, checkpoints, self._store, self._checkpoints, self._defects, self._profile
        )
        self._deliveries[subscription_id] = delivery
        return delivery

    async def _load_checkpoints(self, subscription_id: str) -> dict[int, Position]:
        try:
            return await self._checkpoints.load(subscription_id)
        except grpc.RpcError as error:
            raise store_unavailable(f"reading checkpoints of {subscription_id!r}", error) from error


def _start(lsn: int) -> Position:
    return Position(lsn, 0)


def _shards_of(stream_name: str, raw: bytes) -> list[int]:
    try:
        return [int(shard) for shard in json.loads(raw)["shards"]]
    except (ValueError, KeyError, TypeError) as error:
        raise HStreamError(
            grpc.StatusCode.INTERNAL,
            0,
            f"metadata of stream {stream_name!r} is unreadable ({error!r}): {raw[:120]!r}",
        ) from error


def _user_agent(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "user-agent":
            return str(value)
    return ""
