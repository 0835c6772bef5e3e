"""Reading shards: store entries → ReceivedRecords, offsets → LSNs, waiting at the tail.

Every read path goes through `ShardLog.read`, which (protocol §1) stamps each batch with
the store's append time as `publishTime` and gives it `batchSize` record ids
{shardId, lsn, i}. The reorder-reads defect reverses the batches of each read window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.api.catalog import store_unavailable, timestamp
from refserver.errors import HStreamError
from refserver.protos import Store_pb2 as store_pb
from refserver.protos import Store_pb2_grpc

# How often a waiting reader looks at the store again: appends made through this node
# wake it at once, appends made through other nodes are seen within this interval.
TAIL_POLL_SECONDS = 0.1
READ_WINDOW = 100
# One answer's batches stay under gRPC's default 4 MiB receive limit, which the official
# clients keep: a window that would pass it ends early and the rest comes next time.
RESPONSE_BYTES = 3 * 1024 * 1024


def received_record(shard_id: int, entry: store_pb.Entry) -> api.ReceivedRecord:
    batch = api.BatchedRecord()
    batch.ParseFromString(entry.payload)
    batch.publishTime.CopyFrom(timestamp(entry.timestamp_ms))
    ids = [
        api.RecordId(shardId=shard_id, batchId=entry.lsn, batchIndex=i)
        for i in range(batch.batchSize)
    ]
    return api.ReceivedRecord(recordIds=ids, record=batch)


@dataclass
class Window:
    records: list[api.ReceivedRecord]
    next_lsn: int  # where the next read starts
    tail_lsn: int


class TailSignals:
    """Wakes readers waiting on a shard when this node appends to it."""

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def appended(self, shard_id: int) -> None:
        event = self._events.pop(shard_id, None)
        if event is not None:
            event.set()

    async def wait(self, shard_id: int, seconds: float) -> None:
        event = self._events.setdefault(shard_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except TimeoutError:
            pass


class ShardLog:
    def __init__(
        self, store: Store_pb2_grpc.StoreStub, defects: frozenset[str], signals: TailSignals
    ) -> None:
        self.store = store
        self.reorder = "reorder-reads" in defects
        self.signals = signals

    async def tail(self, shard_id: int) -> int:
        try:
            return int((await self.store.Tail(store_pb.LogReq(log_id=shard_id))).lsn)
        except grpc.RpcError as error:
            raise store_unavailable(f"reading the tail of shard {shard_id}", error) from None

    async def read(
        self, shard_id: int, from_lsn: int, max_batches: int, until_lsn: int = 0
    ) -> Window:
        try:
            response = await self.store.Read(
                store_pb.ReadReq(
                    log_id=shard_id,
                    from_lsn=from_lsn,
                    until_lsn=until_lsn,
                    max_entries=max_batches,
                )
            )
        except grpc.RpcError as error:
            raise store_unavailable(f"reading shard {shard_id}", error) from None
        entries: list[store_pb.Entry] = []
        size = 0
        for entry in response.entries:
            # Always at least one batch, however large: the reader must make progress.
            if entries and size + len(entry.payload) > RESPONSE_BYTES:
                break
            entries.append(entry)
            size += len(entry.payload)
        records = [received_record(shard_id, entry) for entry in entries]
        # Entries before the trim point are gone: continue after it, not at it.
        next_lsn = max(from_lsn, response.trim_point + 1)
        if entries:
            next_lsn = entries[-1].lsn + 1
        if self.reorder:
            records.reverse()
        return Window(records, next_lsn, int(response.tail_lsn))

    async def read_waiting(
        self, shard_id: int, from_lsn: int, max_batches: int, wait_seconds: float
    ) -> Window:
        """Like read, but waits up to `wait_seconds` for a first batch when there is none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            window = await self.read(shard_id, from_lsn, max_batches)
            left = deadline - loop.time()
            if window.records or left <= 0:
                return window
            await self.signals.wait(shard_id, min(left, TAIL_POLL_SECONDS))

    async def resolve(self, shard_id: int, offset: api.ShardOffset) -> int:
        """First LSN to read for a ShardOffset (§5): EARLIEST 1 (the store skips trimmed
        entries), LATEST tail+1, recordOffset its batch, timestamp the first batch
        appended at or after it."""
        kind = offset.WhichOneof("offset")
        if kind == "specialOffset":
            if offset.specialOffset == api.SpecialOffset.Value("LATEST"):
                return await self.tail(shard_id) + 1
            return 1
        if kind == "recordOffset":
            if offset.recordOffset.shardId not in (0, shard_id):
                raise HStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    errors.CONFLICT_SHARD_READER_OFFSET,
                    f"recordOffset names shard {offset.recordOffset.shardId}, "
                    f"but the read is on shard {shard_id}",
                )
            return max(1, int(offset.recordOffset.batchId))
        if kind == "timestampOffset":
            try:
                found = await self.store.FindTime(
                    store_pb.FindTimeReq(
                        log_id=shard_id, timestamp_ms=offset.timestampOffset.timestampInMs
                    )
                )
            except grpc.RpcError as error:
                raise store_unavailable(f"finding a time in shard {shard_id}", error) from None
            return int(found.lsn)
        raise HStreamError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors.INVALID_SHARD_OFFSET,
            "shard offset is missing: give specialOffset (EARLIEST/LATEST), recordOffset "
            "or timestampOffset",
        )

    async def resolve_until(self, shard_id: int, offset: api.ShardOffset | None) -> int:
        """Last LSN to read (inclusive) for an `until` offset; 0 = no end (keep tailing)."""
        if offset is None:
            return 0
        kind = offset.WhichOneof("offset")
        if kind == "specialOffset":
            if offset.specialOffset == api.SpecialOffset.Value("LATEST"):
                # 0 would mean "no end"; an empty shard ends before the first LSN.
                return max(await self.tail(shard_id), 0) or -1
            return -1  # until EARLIEST: nothing
        if kind == "recordOffset":
            return max(1, int(offset.recordOffset.batchId))
        if kind == "timestampOffset":
            return await self.resolve(shard_id, offset) - 1 or -1
        return 0

    async def stream(
        self,
        shard_id: int,
        from_lsn: int,
        until_lsn: int,
        max_batches: int,
        window: int = READ_WINDOW,
    ) -> AsyncIterator[list[api.ReceivedRecord]]:
        """Windows of batches from `from_lsn` through `until_lsn` (-1: none, 0: tail
        forever), at most `max_batches` in all (0: no limit)."""
        if until_lsn < 0:
            return
        sent = 0
        next_lsn = from_lsn
        while max_batches == 0 or sent < max_batches:
            if until_lsn and next_lsn > until_lsn:
                return
            size = window if max_batches == 0 else min(window, max_batches - sent)
            result = await self.read(shard_id, next_lsn, size, until_lsn if until_lsn else 0)
            if result.records:
                sent += len(result.records)
                next_lsn = result.next_lsn
                yield result.records
                continue
            next_lsn = result.next_lsn
            if until_lsn and result.tail_lsn >= until_lsn:
                return  # the rest up to `until` was trimmed
            await self.signals.wait(shard_id, TAIL_POLL_SECONDS)
