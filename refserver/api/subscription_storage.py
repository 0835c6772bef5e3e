"""Subscriptions and their checkpoints in the store's metadata.

Keys: `subscriptions/{id}` holds the subscription with its creation time and the start
lsn of every shard, fixed at creation (EARLIEST = 1, LATEST = tail + 1) so that a
subscription created before any consumer joins still starts where it was created.
`checkpoints/{id}/{shardId}` holds the contiguous acked prefix of a shard, written with
compare-and-set so that a node holding a stale view never moves a checkpoint backwards.
Servers keep nothing else: any node can resume a subscription from these keys.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.api.subscription_progress import Position
from refserver.errors import HStreamError
from refserver.protos import Store_pb2, Store_pb2_grpc

log = logging.getLogger(__name__)

SUBSCRIPTIONS_PREFIX = "subscriptions/"
EARLIEST = api.SpecialOffset.Value("EARLIEST")
LATEST = api.SpecialOffset.Value("LATEST")
# CAS attempts before giving up on one checkpoint write; the next ack retries anyway.
_CAS_ATTEMPTS = 3


def subscription_key(subscription_id: str) -> str:
    return f"{SUBSCRIPTIONS_PREFIX}{subscription_id}"


def checkpoints_prefix(subscription_id: str) -> str:
    return f"checkpoints/{subscription_id}/"


def checkpoint_key(subscription_id: str, shard_id: int) -> str:
    return f"{checkpoints_prefix(subscription_id)}{shard_id}"


def store_unavailable(what: str, error: grpc.RpcError) -> HStreamError:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    return HStreamError(
        grpc.StatusCode.UNAVAILABLE,
        0,
        f"the store is unavailable while {what} ({code}); retry when it is back",
    )


@dataclass(frozen=True)
class SubscriptionRecord:
    subscription_id: str
    stream_name: str
    ack_timeout_seconds: int
    max_unacked_records: int
    offset: int
    creation_time_ms: int
    start_lsns: dict[int, int]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "subscriptionId": self.subscription_id,
                "streamName": self.stream_name,
                "ackTimeoutSeconds": self.ack_timeout_seconds,
                "maxUnackedRecords": self.max_unacked_records,
                "offset": self.offset,
                "creationTimeMs": self.creation_time_ms,
                "startLsns": {str(shard): lsn for shard, lsn in self.start_lsns.items()},
            }
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> SubscriptionRecord:
        value: dict[str, Any] = json.loads(raw)
        return SubscriptionRecord(
            subscription_id=value["subscriptionId"],
            stream_name=value["streamName"],
            ack_timeout_seconds=int(value["ackTimeoutSeconds"]),
            max_unacked_records=int(value["maxUnackedRecords"]),
            offset=int(value["offset"]),
            creation_time_ms=int(value["creationTimeMs"]),
            start_lsns={int(shard): int(lsn) for shard, lsn in value["startLsns"].items()},
        )

    def to_proto(self) -> api.Subscription:
        subscription = api.Subscription(
            subscriptionId=self.subscription_id,
            streamName=self.stream_name,
            ackTimeoutSeconds=self.ack_timeout_seconds,
            maxUnackedRecords=self.max_unacked_records,
            offset=self.offset,
        )
        subscription.creationTime.FromMilliseconds(self.creation_time_ms)
        return subscription


async def load_subscription(
    store: Store_pb2_grpc.StoreStub, subscription_id: str
) -> SubscriptionRecord | None:
    try:
        value = await store.MetaGet(Store_pb2.MetaKey(key=subscription_key(subscription_id)))
    except grpc.RpcError as error:
        raise store_unavailable(f"reading subscription {subscription_id!r}", error) from error
    return SubscriptionRecord.from_json(value.value) if value.found else None


async def require_subscription(
    store: Store_pb2_grpc.StoreStub, subscription_id: str
) -> SubscriptionRecord:
    record = await load_subscription(store, subscription_id)
    if record is None:
        raise HStreamError(
            grpc.StatusCode.NOT_FOUND,
            errors.SUBSCRIPTION_NOT_FOUND,
            f"subscription {subscription_id!r} does not exist; create it first",
        )
    return record


async def list_subscriptions(store: Store_pb2_grpc.StoreStub) -> list[SubscriptionRecord]:
    try:
        items = await store.MetaList(Store_pb2.MetaKey(key=SUBSCRIPTIONS_PREFIX))
    except grpc.RpcError as error:
        raise store_unavailable("listing subscriptions", error) from error
    return sorted(
        (SubscriptionRecord.from_json(item.value) for item in items.items),
        key=lambda record: record.subscription_id,
    )


async def subscriptions_of_stream(store: Store_pb2_grpc.StoreStub, stream_name: str) -> list[str]:
    """Ids of the subscriptions reading a stream (DeleteStream refuses while any exist)."""
    return [
        record.subscription_id
        for record in await list_subscriptions(store)
        if record.stream_name == stream_name
    ]


class CheckpointStore(Protocol):
    """Where checkpoints live: the store (normally) or memory (the lost-checkpoint defect)."""

    async def load(self, subscription_id: str) -> dict[int, Position]: ...

    async def save(self, subscription_id: str, shard_id: int, position: Position) -> None: ...

    async def delete(self, subscription_id: str) -> None: ...


class StoredCheckpoints:
    def __init__(self, store: Store_pb2_grpc.StoreStub) -> None:
        self._store = store

    async def load(self, subscription_id: str) -> dict[int, Position]:
        items = await self._store.MetaList(
            Store_pb2.MetaKey(key=checkpoints_prefix(subscription_id))
        )
        prefix = checkpoints_prefix(subscription_id)
        return {
            int(item.key[len(prefix) :]): Position.from_json(json.loads(item.value))
            for item in items.items
        }

    async def save(self, subscription_id: str, shard_id: int, position: Position) -> None:
        key = checkpoint_key(subscription_id, shard_id)
        raw = json.dumps(position.to_json()).encode()
        for _ in range(_CAS_ATTEMPTS):
            current = await self._store.MetaGet(Store_pb2.MetaKey(key=key))
            if current.found and Position.from_json(json.loads(current.value)) >= position:
                return
            put = await self._store.MetaPut(
                Store_pb2.MetaPutReq(
                    key=key,
                    value=raw,
                    expected_version=current.version if current.found else 0,
                )
            )
            if put.ok:
                return
        log.warning("checkpoint %s -> %s lost %d CAS races", key, position, _CAS_ATTEMPTS)

    async def delete(self, subscription_id: str) -> None:
        items = await self._store.MetaList(
            Store_pb2.MetaKey(key=checkpoints_prefix(subscription_id))
        )
        for item in items.items:
            await self._store.MetaDelete(Store_pb2.MetaDeleteReq(key=item.key, expected_version=-1))


class MemoryCheckpoints:
    """The lost-checkpoint defect: progress survives consumers coming and going, but not
    a server restart."""

    def __init__(self) -> None:
        self._positions: dict[str, dict[int, Position]] = {}

    async def load(self, subscription_id: str) -> dict[int, Position]:
        return dict(self._positions.get(subscription_id, {}))

    async def save(self, subscription_id: str, shard_id: int, position: Position) -> None:
        shards = self._positions.setdefault(subscription_id, {})
        shards[shard_id] = max(position, shards.get(shard_id, position))

    async def delete(self, subscription_id: str) -> None:
        self._positions.pop(subscription_id, None)
