"""The target stream of a connector task, in the store layout the API layer uses.

`streams/{name}` is a JSON object whose `shards` lists the stream's shard ids in key-range
order; a shard id is its store log id and one store entry is one BatchedRecord (protocol
§1). Keys route like Append's clients do: MD5 of the key, shard i of an even split (§2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from HStream.Server import HStreamApi_pb2 as api

from refserver.protos import Store_pb2, Store_pb2_grpc

KEY_SPACE_MAX = 2**128 - 1


class NoSuchStream(LookupError):
    pass


@dataclass(frozen=True)
class StreamShards:
    name: str
    shards: tuple[int, ...]

    def shard_for(self, key: str) -> int:
        position = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest(), "big")
        step = KEY_SPACE_MAX // len(self.shards)
        # The last shard also takes the remainder of the integer division up to 2^128-1.
        return self.shards[min(position // step, len(self.shards) - 1)]


async def stream_shards(store: Store_pb2_grpc.StoreStub, name: str) -> StreamShards:
    got = await store.MetaGet(Store_pb2.MetaKey(key=f"streams/{name}"))
    if not got.found:
        raise NoSuchStream(f"stream {name!r} does not exist; create it before the connector")
    shards = json.loads(got.value)["shards"]
    return StreamShards(name, tuple(int(s) for s in shards))


async def append_batch(store: Store_pb2_grpc.StoreStub, shard: int, batch: api.BatchedRecord,
                       durable: bool = True) -> int:
    """One BatchedRecord as one store entry; returns its lsn once the store has it."""
    reply = await store.Append(Store_pb2.AppendReq(
        log_id=shard, payload=batch.SerializeToString(), durable=durable))
    return int(reply.lsn)
