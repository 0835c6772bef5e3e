"""Shard readers and the stateless streaming reads (protocol §5).

A shard reader's position lives in the store (`readers/{id}`), so any node can serve
ReadShard; the position moves with compare-and-set, so two nodes serving one reader at
once cannot both hand out the same batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors, records
from refserver.api.catalog import Catalog, ReaderMeta, key_hash
from refserver.api.names import check_name
from refserver.api.ownership import Ownership
from refserver.api.shard_reads import ShardLog
from refserver.errors import HStreamError
from refserver.profiles import PROTOCOL, Profile

# No code for these in the protocol page; 902/903 follow HStreamDB's 9xx reader family
# [unconfirmed].
SHARD_READER_EXISTS = 902
SHARD_READER_NOT_FOUND = 903
DEFAULT_MAX_RECORDS = 100
READER_KIND = "shard-reader"


def reader_not_found(reader_id: str) -> HStreamError:
    # FAILED_PRECONDITION, as the real server answers ReadShard on an unknown reader (§5).
    return HStreamError(
        grpc.StatusCode.FAILED_PRECONDITION,
        SHARD_READER_NOT_FOUND,
        f"shard reader {reader_id} does not exist; create it with CreateShardReader",
    )


class ReaderService:
    def __init__(
        self,
        catalog: Catalog,
        shard_log: ShardLog,
        ownership: Ownership,
        profile: Profile = PROTOCOL,
    ) -> None:
        self.catalog = catalog
        self.unicode_names = profile.unicode_names
        self.shard_log = shard_log
        self.ownership = ownership
        # One ReadShard at a time per reader on this node; across nodes the CAS decides.
        self._locks: dict[str, asyncio.Lock] = {}

    async def CreateShardReader(
        self, request: api.CreateShardReaderRequest, context: grpc.aio.ServicerContext
    ) -> api.CreateShardReaderResponse:
        check_name(
            request.readerId, "shard reader id", errors.INVALID_SHARD_READER_ID, self.unicode_names
        )
        if not request.HasField("shardOffset"):
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_SHARD_OFFSET,
                "shardOffset is required (EARLIEST, LATEST, recordOffset or timestampOffset)",
            )
        await self.catalog.require_stream(request.streamName)
        shard = await self.catalog.require_shard(request.shardId)
        if shard.stream_name != request.streamName:
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND,
                errors.STREAM_NOT_FOUND,
                f"shard {request.shardId} is not a shard of stream {request.streamName}",
            )
        start = await self.shard_log.resolve(request.shardId, request.shardOffset)
        reader = ReaderMeta(
            reader_id=request.readerId,
            stream_name=request.streamName,
            shard_id=request.shardId,
            next_lsn=start,
            timeout_ms=request.timeout,
            offset=json_format.MessageToDict(request.shardOffset),
            created_ms=int(time.time() * 1000),
        )
        if not await self.catalog.create_reader(reader):
            raise HStreamError(
                grpc.StatusCode.ALREADY_EXISTS,
                SHARD_READER_EXISTS,
                f"shard reader {request.readerId} already exists",
            )
        return api.CreateShardReaderResponse(
            streamName=request.streamName,
            shardId=request.shardId,
            shardOffset=request.shardOffset,
            readerId=request.readerId,
            timeout=request.timeout,
        )

    async def ReadShard(
        self, request: api.ReadShardRequest, context: grpc.aio.ServicerContext
    ) -> api.ReadShardResponse:
        lock = self._locks.setdefault(request.readerId, asyncio.Lock())
        async with lock:
            found = await self.catalog.reader(request.readerId)
            if found is None:
                raise reader_not_found(request.readerId)
            reader, version = found
            limit = request.maxRecords or DEFAULT_MAX_RECORDS
            window = await self.shard_log.read_waiting(
                reader.shard_id, reader.next_lsn, limit, reader.timeout_ms / 1000
            )
            if window.next_lsn != reader.next_lsn:
                reader.next_lsn = window.next_lsn
                if not await self.catalog.update_reader(reader, version):
                    raise HStreamError(
                        grpc.StatusCode.ABORTED,
                        0,
                        f"shard reader {request.readerId} was moved by another ReadShard "
                        "meanwhile (served by another node?); read again",
                    )
        return api.ReadShardResponse(receivedRecords=window.records)

    async def DeleteShardReader(
        self, request: api.DeleteShardReaderRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        if await self.catalog.reader(request.readerId) is None:
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND,
                SHARD_READER_NOT_FOUND,
                f"shard reader {request.readerId} does not exist",
            )
        await self.ownership.check_owner(READER_KIND, request.readerId, context)
        await self.catalog.delete_reader(request.readerId)
        await self.ownership.forget(READER_KIND, request.readerId)
        self._locks.pop(request.readerId, None)
        return empty_pb2.Empty()

    async def ListShardReaders(
        self, request: api.ListShardReadersRequest, context: grpc.aio.ServicerContext
    ) -> api.ListShardReadersResponse:
        return api.ListShardReadersResponse(readerId=await self.catalog.reader_ids())

    # -- stateless streaming reads ------------------------------------------------------

    def _until(self, request: Any) -> api.ShardOffset | None:
        return request.until if request.HasField("until") else None

    async def ReadShardStream(
        self, request: api.ReadShardStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.ReadShardStreamResponse]:
        await self.catalog.require_shard(request.shardId)
        async for batch in self._shard_windows(
            request.shardId,
            getattr(request, "from"),
            self._until(request),
            request.maxReadBatches,
        ):
            yield api.ReadShardStreamResponse(receivedRecords=batch)

    async def ReadSingleShardStream(
        self, request: api.ReadSingleShardStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.ReadSingleShardStreamResponse]:
        stream = await self.catalog.require_stream(request.streamName)
        if len(stream.shards) != 1:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_SHARD_COUNT,
                f"stream {stream.name} has {len(stream.shards)} shards; "
                "ReadSingleShardStream needs exactly one (use ReadStream)",
            )
        async for batch in self._shard_windows(
            stream.shards[0],
            getattr(request, "from"),
            self._until(request),
            request.maxReadBatches,
        ):
            yield api.ReadSingleShardStreamResponse(receivedRecords=batch)

    async def _shard_windows(
        self,
        shard_id: int,
        start: api.ShardOffset,
        until: api.ShardOffset | None,
        max_batches: int,
    ) -> AsyncIterator[list[api.ReceivedRecord]]:
        # An absent `from` reads from the start, as with EARLIEST.
        from_lsn = (
            await self.shard_log.resolve(shard_id, start) if start.WhichOneof("offset") else 1
        )
        until_lsn = await self.shard_log.resolve_until(shard_id, until)
        async for batch in self.shard_log.stream(shard_id, from_lsn, until_lsn, max_batches):
            yield batch

    async def ReadStream(
        self, request: api.ReadStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.ReadStreamResponse]:
        stream = await self.catalog.require_stream(request.streamName)
        start = _shard_offset(getattr(request, "from"))
        until = _shard_offset(request.until) if request.HasField("until") else None
        # Shards are read side by side; each keeps its own order, and maxReadBatches
        # bounds the total.
        queue: asyncio.Queue[list[api.ReceivedRecord] | None] = asyncio.Queue(maxsize=4)

        async def pump(shard_id: int) -> None:
            try:
                async for batch in self._shard_windows(shard_id, start, until, 0):
                    await queue.put(batch)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(shard_id)) for shard_id in stream.shards]
        sent = 0
        running = len(tasks)
        try:
            while running:
                batch = await queue.get()
                if batch is None:
                    running -= 1
                    continue
                if request.maxReadBatches:
                    batch = batch[: request.maxReadBatches - sent]
                sent += len(batch)
                yield api.ReadStreamResponse(receivedRecords=batch)
                if request.maxReadBatches and sent >= request.maxReadBatches:
                    return
            await asyncio.gather(*tasks)  # re-raises a pump's error (HStreamError)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def ReadStreamByKey(
        self,
        request_iterator: AsyncIterator[api.ReadStreamByKeyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[api.ReadStreamByKeyResponse]:
        """Records of one key, decompressed; each request grants `readRecordCount` more."""
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        stream = await self.catalog.require_stream(first.streamName)
        shards = await self.catalog.shards_of(stream)
        wanted = key_hash(first.key)
        shard = next(s for s in shards if s.start <= wanted <= s.end)
        grant = first.readRecordCount
        more = asyncio.Event()

        async def take_grants() -> None:
            nonlocal grant
            async for later in requests:
                grant += later.readRecordCount
                more.set()

        granter = asyncio.create_task(take_grants())
        try:
            start = getattr(first, "from")
            until = first.until if first.HasField("until") else None
            async for batch in self._shard_windows(shard.shard_id, start, until, 0):
                for received in batch:
                    ids, matched = [], []
                    for record_id, record in zip(
                        received.recordIds, records.decode(received.record), strict=False
                    ):
                        if record.header.key == first.key:
                            ids.append(record_id)
                            matched.append(record)
                    while matched:
                        while grant <= 0:
                            more.clear()
                            await more.wait()
                        count = min(grant, len(matched))
                        grant -= count
                        yield api.ReadStreamByKeyResponse(
                            recordIds=ids[:count], receivedRecords=matched[:count]
                        )
                        ids, matched = ids[count:], matched[count:]
        finally:
            granter.cancel()
            with contextlib.suppress(BaseException):
                await granter


def _shard_offset(offset: api.StreamOffset) -> api.ShardOffset:
    shard_offset = api.ShardOffset()
    if offset.WhichOneof("offset") == "timestampOffset":
        shard_offset.timestampOffset.CopyFrom(offset.timestampOffset)
    else:
        shard_offset.specialOffset = offset.specialOffset
    return shard_offset
