"""Streams, shards and shard readers as JSON documents in the store's metadata map.

Key schema, shared by every node (and the subscription service):
  streams/{name}      {"name","replicationFactor","backlogDuration","shardCount",
                       "creationTimeMs","shards":[shardId,...]}
  shards/{shardId}    {"streamName","shardId","start","end","epoch"}  (start/end decimal)
  readers/{readerId}  {"readerId","streamName","shardId","nextLsn","timeoutMs",
                       "offset","createdMs"}
A shard's id is also its store log id.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.errors import HStreamError
from refserver.protos import Store_pb2 as store_pb
from refserver.protos import Store_pb2_grpc

KEY_SPACE_MAX = 2**128 - 1
# Shard ids stay below 2^63 so clients that hold them in signed 64-bit integers are fine.
SHARD_ID_BITS = 63


def key_ranges(shard_count: int) -> list[tuple[int, int]]:
    """HStreamDB's even split of [0, 2^128-1]: step = (2^128-1)//N, the last shard takes
    the remainder up to 2^128-1."""
    step = KEY_SPACE_MAX // shard_count
    ranges = [(i * step, i * step + step - 1) for i in range(shard_count)]
    ranges[-1] = (ranges[-1][0], KEY_SPACE_MAX)
    return ranges


def key_hash(key: str) -> int:
    """MD5 of the key's UTF-8 bytes as a big-endian 128-bit integer."""
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def store_unavailable(what: str, error: grpc.RpcError) -> HStreamError:
    # Code 0 = HStreamDB's InternalError family; the gRPC status is what clients act on.
    code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
    return HStreamError(
        grpc.StatusCode.UNAVAILABLE,
        0,
        f"the store is unavailable while {what} ({code}); retry when it is back",
    )


@dataclass
class StreamMeta:
    name: str
    replication_factor: int
    backlog_duration: int
    shard_count: int
    creation_time_ms: int
    shards: list[int]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "replicationFactor": self.replication_factor,
                "backlogDuration": self.backlog_duration,
                "shardCount": self.shard_count,
                "creationTimeMs": self.creation_time_ms,
                "shards": self.shards,
            }
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> StreamMeta:
        value = json.loads(raw)
        return StreamMeta(
            name=value["name"],
            replication_factor=value["replicationFactor"],
            backlog_duration=value["backlogDuration"],
            shard_count=value["shardCount"],
            creation_time_ms=value["creationTimeMs"],
            shards=[int(s) for s in value["shards"]],
        )

    def to_proto(self) -> api.Stream:
        return api.Stream(
            streamName=self.name,
            replicationFactor=self.replication_factor,
            backlogDuration=self.backlog_duration,
            shardCount=self.shard_count,
            creationTime=timestamp(self.creation_time_ms),
        )


@dataclass
class ShardMeta:
    stream_name: str
    shard_id: int
    start: int
    end: int
    epoch: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "streamName": self.stream_name,
                "shardId": self.shard_id,
                "start": str(self.start),
                "end": str(self.end),
                "epoch": self.epoch,
            }
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> ShardMeta:
        value = json.loads(raw)
        return ShardMeta(
            stream_name=value["streamName"],
            shard_id=int(value["shardId"]),
            start=int(value["start"]),
            end=int(value["end"]),
            epoch=int(value["epoch"]),
        )

    def to_proto(self) -> api.Shard:
        return api.Shard(
            streamName=self.stream_name,
            shardId=self.shard_id,
            startHashRangeKey=str(self.start),
            endHashRangeKey=str(self.end),
            epoch=self.epoch,
            isActive=True,
        )


@dataclass
class ReaderMeta:
    reader_id: str
    stream_name: str
    shard_id: int
    next_lsn: int
    timeout_ms: int
    offset: dict[str, Any]  # the requested start, as given (answers CreateShardReader)
    created_ms: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "readerId": self.reader_id,
                "streamName": self.stream_name,
                "shardId": self.shard_id,
                "nextLsn": self.next_lsn,
                "timeoutMs": self.timeout_ms,
                "offset": self.offset,
                "createdMs": self.created_ms,
            }
        ).encode()

    @staticmethod
    def from_json(raw: bytes) -> ReaderMeta:
        value = json.loads(raw)
        return ReaderMeta(
            reader_id=value["readerId"],
            stream_name=value["streamName"],
            shard_id=int(value["shardId"]),
            next_lsn=int(value["nextLsn"]),
            timeout_ms=int(value["timeoutMs"]),
            offset=value["offset"],
            created_ms=int(value["createdMs"]),
        )


def stream_key(name: str) -> str:
    return f"streams/{name}"


def shard_key(shard_id: int) -> str:
    return f"shards/{shard_id}"


def reader_key(reader_id: str) -> str:
    return f"readers/{reader_id}"


class Catalog:
    """Typed access to the metadata documents; store failures become UNAVAILABLE."""

    def __init__(self, store: Store_pb2_grpc.StoreStub) -> None:
        self.store = store

    async def _get(self, key: str) -> store_pb.MetaValue:
        try:
            return await self.store.MetaGet(store_pb.MetaKey(key=key))
        except grpc.RpcError as error:
            raise store_unavailable(f"reading {key}", error) from None

    async def _put(self, key: str, value: bytes, expected_version: int) -> bool:
        try:
            response = await self.store.MetaPut(
                store_pb.MetaPutReq(key=key, value=value, expected_version=expected_version)
            )
        except grpc.RpcError as error:
            raise store_unavailable(f"writing {key}", error) from None
        return bool(response.ok)

    async def _delete(self, key: str, expected_version: int = -1) -> bool:
        try:
            response = await self.store.MetaDelete(
                store_pb.MetaDeleteReq(key=key, expected_version=expected_version)
            )
        except grpc.RpcError as error:
            raise store_unavailable(f"deleting {key}", error) from None
        return bool(response.ok)

    async def _list(self, prefix: str) -> list[store_pb.MetaKV]:
        try:
            response = await self.store.MetaList(store_pb.MetaKey(key=prefix))
        except grpc.RpcError as error:
            raise store_unavailable(f"listing {prefix}", error) from None
        return list(response.items)

    # streams ----------------------------------------------------------------------------

    async def stream(self, name: str) -> StreamMeta | None:
        found = await self._get(stream_key(name))
        return StreamMeta.from_json(found.value) if found.found else None

    async def require_stream(self, name: str) -> StreamMeta:
        stream = await self.stream(name)
        if stream is None:
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND, errors.STREAM_NOT_FOUND, f"stream {name} not found"
            )
        return stream

    async def streams(self, prefix: str = "") -> list[StreamMeta]:
        return [StreamMeta.from_json(item.value) for item in await self._list(f"streams/{prefix}")]

    async def create_stream(self, stream: StreamMeta) -> list[ShardMeta]:
        """Write the shards, then the stream (create-if-absent); False-y on a duplicate."""
        shards: list[ShardMeta] = []
        for start, end in key_ranges(stream.shard_count):
            # Random ids claimed with create-if-absent: unique without a shared counter.
            while True:
                shard = ShardMeta(
                    stream.name,
                    random.getrandbits(SHARD_ID_BITS) or 1,
                    start,
                    end,
                    stream.shard_count,
                )
                if await self._put(shard_key(shard.shard_id), shard.to_json(), 0):
                    break
            shards.append(shard)
        stream.shards = [s.shard_id for s in shards]
        if not await self._put(stream_key(stream.name), stream.to_json(), 0):
            for shard in shards:
                await self._delete(shard_key(shard.shard_id))
            raise HStreamError(
                grpc.StatusCode.ALREADY_EXISTS,
                errors.STREAM_EXISTS,
                f"stream {stream.name} already exists",
            )
        return shards

    async def delete_stream(self, stream: StreamMeta) -> None:
        await self._delete(stream_key(stream.name))
        for shard_id in stream.shards:
            await self._delete(shard_key(shard_id))

    # shards -----------------------------------------------------------------------------

    async def shard(self, shard_id: int) -> ShardMeta | None:
        found = await self._get(shard_key(shard_id))
        return ShardMeta.from_json(found.value) if found.found else None

    async def require_shard(self, shard_id: int) -> ShardMeta:
        shard = await self.shard(shard_id)
        if shard is None:
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND,
                errors.STREAM_NOT_FOUND,
                f"shard {shard_id} not found (its stream does not exist or was deleted)",
            )
        return shard

    async def shards_of(self, stream: StreamMeta) -> list[ShardMeta]:
        shards = []
        for shard_id in stream.shards:
            shard = await self.shard(shard_id)
            if shard is not None:
                shards.append(shard)
        return shards

    # readers ----------------------------------------------------------------------------

    async def reader(self, reader_id: str) -> tuple[ReaderMeta, int] | None:
        found = await self._get(reader_key(reader_id))
        return (ReaderMeta.from_json(found.value), found.version) if found.found else None

    async def create_reader(self, reader: ReaderMeta) -> bool:
        return await self._put(reader_key(reader.reader_id), reader.to_json(), 0)

    async def update_reader(self, reader: ReaderMeta, version: int) -> bool:
        return await self._put(reader_key(reader.reader_id), reader.to_json(), version)

    async def delete_reader(self, reader_id: str) -> bool:
        return await self._delete(reader_key(reader_id))

    async def reader_ids(self) -> list[str]:
        return [item.key[len("readers/") :] for item in await self._list("readers/")]
