"""gRPC face of the store: `refserver.store.Store` (Store.proto) over a StoreEngine."""

from __future__ import annotations

import grpc

from refserver.protos import Store_pb2 as pb
from refserver.protos import Store_pb2_grpc as pb_grpc
from refserver.store.engine import StoreEngine

# Entries are up to the node's max record size (1 MiB by default, configurable) and Read
# answers carry up to MAX_READ_BYTES; leave headroom over both.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class StoreService(pb_grpc.StoreServicer):
    def __init__(self, engine: StoreEngine) -> None:
        self.engine = engine

    async def Append(
        self, request: pb.AppendReq, context: grpc.aio.ServicerContext
    ) -> pb.AppendResp:
        if request.log_id == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log_id 0 is reserved")
        entry = await self.engine.append(request.log_id, request.payload, request.durable)
        return pb.AppendResp(lsn=entry.lsn, timestamp_ms=entry.timestamp_ms)

    async def Read(self, request: pb.ReadReq, context: grpc.aio.ServicerContext) -> pb.ReadResp:
        result = await self.engine.read(
            request.log_id, request.from_lsn, request.until_lsn, request.max_entries
        )
        return pb.ReadResp(
            entries=[
                pb.Entry(lsn=e.lsn, timestamp_ms=e.timestamp_ms, payload=e.payload)
                for e in result.entries
            ],
            tail_lsn=result.tail_lsn,
            trim_point=result.trim_point,
        )

    async def Tail(self, request: pb.LogReq, context: grpc.aio.ServicerContext) -> pb.TailResp:
        return pb.TailResp(lsn=self.engine.tail(request.log_id))

    async def Trim(self, request: pb.TrimReq, context: grpc.aio.ServicerContext) -> pb.Empty:
        await self.engine.trim(request.log_id, request.lsn)
        return pb.Empty()

    async def FindTime(
        self, request: pb.FindTimeReq, context: grpc.aio.ServicerContext
    ) -> pb.TailResp:
        return pb.TailResp(lsn=await self.engine.find_time(request.log_id, request.timestamp_ms))

    async def DeleteLog(self, request: pb.LogReq, context: grpc.aio.ServicerContext) -> pb.Empty:
        await self.engine.delete_log(request.log_id)
        return pb.Empty()

    async def MetaGet(self, request: pb.MetaKey, context: grpc.aio.ServicerContext) -> pb.MetaValue:
        found = await self.engine.meta_get(request.key)
        if found is None:
            return pb.MetaValue(found=False)
        value, version = found
        return pb.MetaValue(found=True, value=value, version=version)

    async def MetaPut(
        self, request: pb.MetaPutReq, context: grpc.aio.ServicerContext
    ) -> pb.MetaPutResp:
        ok, version = await self.engine.meta_put(
            request.key, request.value, request.expected_version
        )
        return pb.MetaPutResp(ok=ok, version=version)

    async def MetaDelete(
        self, request: pb.MetaDeleteReq, context: grpc.aio.ServicerContext
    ) -> pb.MetaPutResp:
        ok, version = await self.engine.meta_delete(request.key, request.expected_version)
        return pb.MetaPutResp(ok=ok, version=version)

    async def MetaList(
        self, request: pb.MetaKey, context: grpc.aio.ServicerContext
    ) -> pb.MetaItems:
        items = await self.engine.meta_list(request.key)
        return pb.MetaItems(items=[pb.MetaKV(key=k, value=v, version=ver) for k, v, ver in items])

    async def Ping(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.Empty:
        return pb.Empty()
