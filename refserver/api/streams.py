"""Streams, shards and appends: the RPCs of protocol §1–2.

CreateStream/DeleteStream/GetStream/ListStreams(WithPrefix)/ListShards, Append,
GetTailRecordId, TrimShard, TrimStream. Methods take (request, context) and raise
HStreamError; the servicer turns those into JSON-coded statuses (§6).
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.api.catalog import Catalog, StreamMeta, store_unavailable
from refserver.api.names import check_name
from refserver.api.ownership import Ownership
from refserver.api.shard_reads import ShardLog, TailSignals
from refserver.api.subscription_storage import subscriptions_of_stream
from refserver.errors import HStreamError
from refserver.profiles import PROTOCOL, Profile
from refserver.protos import Store_pb2 as store_pb
from refserver.protos import Store_pb2_grpc

log = logging.getLogger(__name__)

class StreamService:
    def __init__(
        self,
        store: Store_pb2_grpc.StoreStub,
        shard_log: ShardLog,
        signals: TailSignals,
        defects: frozenset[str],
        max_record_size: int,
        ownership: Ownership,
        profile: Profile = PROTOCOL,
    ) -> None:
        self.ownership = ownership
        self.unicode_names = profile.unicode_names
        self.store = store
        self.catalog = Catalog(store)
        self.shard_log = shard_log
        self.signals = signals
        self.durable = "ack-before-durable" not in defects
        self.max_record_size = max_record_size

    async def CreateStream(
        self, request: api.Stream, context: grpc.aio.ServicerContext
    ) -> api.Stream:
        check_name(
            request.streamName, "stream name", errors.INVALID_STREAM_NAME, self.unicode_names
        )
        if request.replicationFactor <= 0:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_REPLICA_FACTOR,
                f"replicationFactor must be > 0 (got {request.replicationFactor})",
            )
        if request.shardCount <= 0:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_SHARD_COUNT,
                f"shardCount must be > 0 (got {request.shardCount})",
            )
        stream = StreamMeta(
            name=request.streamName,
            replication_factor=request.replicationFactor,
            backlog_duration=request.backlogDuration,
            shard_count=request.shardCount,
            creation_time_ms=int(time.time() * 1000),
            shards=[],
        )
        await self.catalog.create_stream(stream)
        return stream.to_proto()

    async def DeleteStream(
        self, request: api.DeleteStreamRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        stream = await self.catalog.stream(request.streamName)
        if stream is None:
            if request.ignoreNonExist:
                return empty_pb2.Empty()
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND,
                errors.STREAM_NOT_FOUND,
                f"stream {request.streamName} not found",
            )
        if not request.force:
            try:
                subscriptions = await subscriptions_of_stream(self.store, stream.name)
            except grpc.RpcError as error:
                raise store_unavailable("listing subscriptions", error) from None
            if subscriptions:
                raise HStreamError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    errors.STREAM_HAS_SUBSCRIPTIONS,
                    f"stream {stream.name} has subscriptions {', '.join(sorted(subscriptions))};"
                    " delete them first or pass force",
                    extra=sorted(subscriptions),
                )
        await self.catalog.delete_stream(stream)
        for shard_id in stream.shards:
            try:
                await self.store.DeleteLog(store_pb.LogReq(log_id=shard_id))
            except grpc.RpcError as error:
                # The stream is gone from the catalog already; leftover entries are only
                # unreachable space, so the delete still succeeds.
                log.warning("could not drop the log of shard %d: %s", shard_id, error)
            await self.ownership.forget("shard", str(shard_id))
        return empty_pb2.Empty()

    async def GetStream(
        self, request: api.GetStreamRequest, context: grpc.aio.ServicerContext
    ) -> api.GetStreamResponse:
        stream = await self.catalog.require_stream(request.name)
        return api.GetStreamResponse(stream=stream.to_proto())

    async def ListStreams(
        self, request: api.ListStreamsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListStreamsResponse:
        streams = await self.catalog.streams()
        return api.ListStreamsResponse(streams=[s.to_proto() for s in streams])

    async def ListStreamsWithPrefix(
        self, request: api.ListStreamsWithPrefixRequest, context: grpc.aio.ServicerContext
    ) -> api.ListStreamsResponse:
        streams = await self.catalog.streams(request.prefix)
        return api.ListStreamsResponse(streams=[s.to_proto() for s in streams])

    async def ListShards(
        self, request: api.ListShardsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListShardsResponse:
        stream = await self.catalog.stream(request.streamName)
        if stream is None:
            # The real server answers UNAVAILABLE here, not NOT_FOUND (§2).
            raise HStreamError(
                grpc.StatusCode.UNAVAILABLE,
                errors.STREAM_NOT_FOUND,
                f"stream {request.streamName} not found",
            )
        shards = await self.catalog.shards_of(stream)
        return api.ListShardsResponse(shards=[s.to_proto() for s in shards])

    async def Append(
        self, request: api.AppendRequest, context: grpc.aio.ServicerContext
    ) -> api.AppendResponse:
        batch = request.records
        if not request.HasField("records") or batch.batchSize == 0 or not batch.payload:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.EMPTY_BATCHED_RECORD,
                "empty batch: records must be set with batchSize > 0 and a payload",
            )
        if len(batch.payload) > self.max_record_size:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.INVALID_RECORD_SIZE,
                f"batch payload is {len(batch.payload)} bytes, over the limit of "
                f"{self.max_record_size} bytes (--max-record-size)",
            )
        # Like the real server: no check that the shard belongs to the named stream and no
        # ownership check (§1); only that the shard exists, so a deleted stream refuses.
        await self.catalog.require_shard(request.shardId)
        try:
            written = await self.store.Append(
                store_pb.AppendReq(
                    log_id=request.shardId,
                    payload=batch.SerializeToString(),
                    durable=self.durable,
                )
            )
        except grpc.RpcError as error:
            raise store_unavailable(f"appending to shard {request.shardId}", error) from None
        self.signals.appended(request.shardId)
        ids = [
            api.RecordId(shardId=request.shardId, batchId=written.lsn, batchIndex=i)
            for i in range(batch.batchSize)
        ]
        return api.AppendResponse(
            streamName=request.streamName, shardId=request.shardId, recordIds=ids
        )

    async def GetTailRecordId(
        self, request: api.GetTailRecordIdRequest, context: grpc.aio.ServicerContext
    ) -> api.GetTailRecordIdResponse:
        await self.catalog.require_shard(request.shardId)
        tail = await self.shard_log.tail(request.shardId)
        return api.GetTailRecordIdResponse(
            tailRecordId=api.RecordId(shardId=request.shardId, batchId=tail, batchIndex=0)
        )

    async def _trim(self, shard_id: int, offset: api.ShardOffset) -> None:
        """Trim through the offset's batch: later reads start after it."""
        kind = offset.WhichOneof("offset")
        if kind == "specialOffset" and offset.specialOffset == api.SpecialOffset.Value("EARLIEST"):
            return
        if kind == "recordOffset":
            last = int(offset.recordOffset.batchId)
        else:
            # LATEST: the tail is trimmed; a timestamp: everything appended before it.
            last = await self.shard_log.resolve(shard_id, offset) - 1
        if last <= 0:
            return
        try:
            await self.store.Trim(store_pb.TrimReq(log_id=shard_id, lsn=last))
        except grpc.RpcError as error:
            raise store_unavailable(f"trimming shard {shard_id}", error) from None

    async def TrimShard(
        self, request: api.TrimShardRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.catalog.require_stream(request.streamName)
        shard = await self.catalog.require_shard(request.shardId)
        if shard.stream_name != request.streamName:
            raise HStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors.STREAM_NOT_FOUND,
                f"shard {request.shardId} belongs to stream {shard.stream_name}, "
                f"not {request.streamName}",
            )
        await self._trim(request.shardId, request.trimPoint)
        return empty_pb2.Empty()

    async def TrimStream(
        self, request: api.TrimStreamRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        stream = await self.catalog.require_stream(request.streamName)
        point = request.trimPoint
        offset = api.ShardOffset()
        if point.WhichOneof("offset") == "timestampOffset":
            offset.timestampOffset.CopyFrom(point.timestampOffset)
        else:
            offset.specialOffset = point.specialOffset
        for shard_id in stream.shards:
            await self._trim(shard_id, offset)
        return empty_pb2.Empty()
