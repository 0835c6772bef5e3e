"""The protocol baseline: a client written directly on the official gRPC stubs.

Run as `python -m harness.clients.raw_driver`; speaks PROTOCOL.md. It does what the protocol
page says a correct client does, and nothing clever: bootstrap from the first URL of the list
that answers DescribeCluster, and remember every node it names; route a key by MD5 to its
shard and the shard to the owner that LookupShard names; forget a cached owner after any
error on it (so the next call looks it up again). Lookups and listings are reads: when the
node asked does not answer (UNAVAILABLE, DEADLINE_EXCEEDED) the next known node is asked,
and answers from then on. Writes are never retried (a retry would hide whether the first
attempt landed); a write that got no answer only moves later calls to the next known node.
Other clients are compared with it.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials, wire
from harness.clients.driver_loop import DriverLoop, Rejected, collect, error_text, record_out
from harness.clients.python_driver import shard_offset

CALL_TIMEOUT = 10.0
# Lookups are cheap reads; a node that does not answer one within this is treated as gone
# for this call and the next known node is asked (a paused node never answers).
LOOKUP_TIMEOUT = 5.0
UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def decoded(received: api.ReceivedRecord) -> list[dict[str, Any]]:
    out = []
    for record_id, record in zip(received.recordIds, wire.unbatch(received.record), strict=True):
        payload: bytes | dict[str, Any]
        if record.header.flag == api.HStreamRecordHeader.Flag.JSON:
            from google.protobuf import json_format, struct_pb2

            struct = struct_pb2.Struct()
            struct.ParseFromString(record.payload)
            payload = json_format.MessageToDict(struct)
        else:
            payload = record.payload
        out.append(
            record_out(
                (record_id.shardId, record_id.batchId, record_id.batchIndex),
                record.header.key,
                payload,
                dict(record.header.attributes),
            )
        )
    return out


class RawConsumer:
    def __init__(self, call: Any, subscription: str, consumer: str) -> None:
        self.requests: asyncio.Queue[api.StreamingFetchRequest | None] = asyncio.Queue()
        self.received: asyncio.Queue[api.ReceivedRecord] = asyncio.Queue()
        self.subscription, self.consumer = subscription, consumer
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.call = call

    async def outgoing(self):  # type: ignore[no-untyped-def]
        while (request := await self.requests.get()) is not None:
            yield request


class RawDriver(DriverLoop):
    name = "raw"

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.bootstrap: str | None = None
        self.known: list[str] = []  # every node heard of, in preference order
        self.owners: dict[int, str] = {}
        self.shards: dict[str, list[api.Shard]] = {}
        self.consumers: dict[tuple[str, str], RawConsumer] = {}
        self.credential: str | None = None

    def stub(self, endpoint: str | None = None) -> api_grpc.HStreamApiStub:
        endpoint = endpoint or self.bootstrap
        if endpoint is None:
            raise Rejected("not connected: send `connect` first")
        if endpoint not in self.channels:
            self.channels[endpoint] = credentials.aio_channel(endpoint, self.credential)
        return api_grpc.HStreamApiStub(self.channels[endpoint])

    async def op_connect(self, urls: list[str], token: str | None = None) -> dict[str, Any]:
        # `token`: what follows "Basic " in the authorization metadata of every call.
        self.credential = token
        errors = []
        for url in urls:
            try:
                described = await self.stub(url).DescribeCluster(Empty(), timeout=3)
            except grpc.RpcError as error:
                errors.append(f"{url}: {error.code().name}")  # type: ignore[attr-defined]
                continue
            self.bootstrap = url
            nodes = [wire.endpoint_of(n) for n in described.serverNodes]
            self.known = list(dict.fromkeys([*urls, *nodes]))
            return {"nodes": nodes, "used": url}
        raise ConnectionError(f"no bootstrap URL answered DescribeCluster: {'; '.join(errors)}")

    def others(self) -> list[str]:
        """Known nodes, the current bootstrap first."""
        first = [self.bootstrap] if self.bootstrap else []
        return list(dict.fromkeys([*first, *self.known]))

    async def ask(self, method: str, request: Any, timeout: float = LOOKUP_TIMEOUT) -> Any:
        """An idempotent read, asked of each known node in turn until one answers."""
        last: grpc.RpcError | None = None
        for endpoint in self.others():
            try:
                answer = await getattr(self.stub(endpoint), method)(request, timeout=timeout)
            except grpc.RpcError as error:
                if error.code() not in UNANSWERED:  # type: ignore[attr-defined]
                    raise
                last = error
                continue
            self.bootstrap = endpoint
            return answer
        if last is None:
            raise Rejected("not connected: send `connect` first")
        raise last

    async def write(self, method: str, request: Any) -> Any:
        """A non-idempotent call on the bootstrap node: never retried; when it goes
        unanswered, later calls start from the next known node."""
        try:
            return await getattr(self.stub(), method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() in UNANSWERED and len(self.others()) > 1:  # type: ignore[attr-defined]
                self.bootstrap = self.others()[1]
            raise

    async def op_create_stream(self, stream: str, shards: int = 1, replication_factor: int = 1):
        await self.write(
            "CreateStream",
            api.Stream(streamName=stream, replicationFactor=replication_factor, shardCount=shards),
        )

    async def op_delete_stream(self, stream: str, force: bool = False, ignore_non_exist=False):
        await self.write(
            "DeleteStream",
            api.DeleteStreamRequest(
                streamName=stream, force=force, ignoreNonExist=ignore_non_exist
            ),
        )
        self.shards.pop(stream, None)

    async def op_list_streams(self) -> dict[str, Any]:
        answer = await self.ask("ListStreams", api.ListStreamsRequest())
        return {"streams": [s.streamName for s in answer.streams]}

    async def list_shards(self, stream: str) -> list[api.Shard]:
        if stream not in self.shards:
            answer = await self.ask("ListShards", api.ListShardsRequest(streamName=stream))
            self.shards[stream] = list(answer.shards)
        return self.shards[stream]

    async def op_list_shards(self, stream: str) -> dict[str, Any]:
        self.shards.pop(stream, None)
        return {
            "shards": [
                {"shard_id": s.shardId, "start": s.startHashRangeKey, "end": s.endHashRangeKey}
                for s in await self.list_shards(stream)
            ]
        }

    async def owner_of(self, shard_id: int) -> str:
        if shard_id not in self.owners:
            answer = await self.ask("LookupShard", api.LookupShardRequest(shardId=shard_id))
            self.owners[shard_id] = wire.endpoint_of(answer.serverNode)
        return self.owners[shard_id]

    async def op_lookup_shard(self, shard_id: int) -> dict[str, Any]:
        self.owners.pop(shard_id, None)
        return {"node": await self.owner_of(shard_id)}

    async def op_append(
        self, stream: str, records: list[dict[str, Any]], key: str = "", compression="none"
    ) -> dict[str, Any]:
        import base64

        shard = wire.shard_for_key(await self.list_shards(stream), key)
        built = [
            wire.json_record(r["json"], key=key, attributes=r.get("attributes"))
            if r.get("json") is not None
            else wire.raw_record(
                base64.b64decode(r.get("data", "")), key=key, attributes=r.get("attributes")
            )
            for r in records
        ]
        if compression not in wire.COMPRESSIONS:
            raise Rejected(f"unknown compression {compression!r}")
        owner = await self.owner_of(shard.shardId)
        try:
            answer = await self.stub(owner).Append(
                api.AppendRequest(
                    streamName=stream, shardId=shard.shardId, records=wire.batch(built, compression)
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError:
            self.owners.pop(shard.shardId, None)  # look the owner up again next time
            raise
        return {"record_ids": [[i.shardId, i.batchId, i.batchIndex] for i in answer.recordIds]}

    async def op_subscribe(
        self,
        subscription: str,
        stream: str,
        ack_timeout: int = 30,
        max_unacked: int = 10_000,
        offset: str = "earliest",
    ) -> None:
        special = api.SpecialOffset.EARLIEST if offset == "earliest" else api.SpecialOffset.LATEST
        await self.write(
            "CreateSubscription",
            api.Subscription(
                subscriptionId=subscription,
                streamName=stream,
                ackTimeoutSeconds=ack_timeout,
                maxUnackedRecords=max_unacked,
                offset=special,
            ),
        )

    async def subscription_owner(self, subscription: str) -> str:
        answer = await self.ask(
            "LookupSubscription", api.LookupSubscriptionRequest(subscriptionId=subscription)
        )
        return wire.endpoint_of(answer.serverNode)

    async def op_delete_subscription(self, subscription: str, force: bool = False) -> None:
        owner = await self.subscription_owner(subscription)
        await self.stub(owner).DeleteSubscription(
            api.DeleteSubscriptionRequest(subscriptionId=subscription, force=force),
            timeout=CALL_TIMEOUT,
        )

    async def consumer_for(self, subscription: str, consumer: str) -> RawConsumer:
        key = (subscription, consumer)
        state = self.consumers.get(key)
        if state is not None and state.task is not None and state.task.done():
            self.consumers.pop(key)
            if state.error is not None:
                raise state.error
            state = None
        if state is None:
            owner = await self.subscription_owner(subscription)
            placeholder = RawConsumer(None, subscription, consumer)
            placeholder.requests.put_nowait(
                api.StreamingFetchRequest(subscriptionId=subscription, consumerName=consumer)
            )
            # Metadata given here, not left to the channel's interceptor: grpc.aio's
            # stream-stream interception did not send it (the server saw no token).
            placeholder.call = self.stub(owner).StreamingFetch(
                placeholder.outgoing(), metadata=credentials.metadata(self.credential) or None
            )

            async def drain(state: RawConsumer = placeholder) -> None:
                try:
                    async for response in state.call:
                        await state.received.put(response.receivedRecords)
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                        state.error = error

            placeholder.task = asyncio.create_task(drain())
            self.consumers[key] = state = placeholder
        return state

    async def op_fetch(
        self,
        subscription: str,
        consumer: str,
        max: int = 100,
        timeout_ms: int = 1000,
        ack: bool = True,
    ) -> dict[str, Any]:
        state = await self.consumer_for(subscription, consumer)
        batches = await collect(
            state.received, max, timeout_ms / 1000, weight=lambda batch: len(batch.recordIds)
        )
        got = [record for batch in batches for record in decoded(batch)]
        if not got and state.task is not None and state.task.done():
            await self.consumer_for(subscription, consumer)  # surfaces the stream's error
        if ack and got:
            await self.op_ack(subscription, consumer, [r["record_id"] for r in got])
        return {"records": got}

    async def op_ack(self, subscription: str, consumer: str, record_ids: list[list[int]]) -> None:
        state = self.consumers.get((subscription, consumer))
        if state is None:
            raise Rejected(f"no running consumer {consumer} on {subscription}")
        ids = [api.RecordId(shardId=s, batchId=b, batchIndex=i) for s, b, i in record_ids]
        await state.requests.put(
            api.StreamingFetchRequest(
                subscriptionId=subscription, consumerName=consumer, ackIds=ids
            )
        )

    async def op_stop_consumer(self, subscription: str, consumer: str) -> None:
        state = self.consumers.pop((subscription, consumer), None)
        if state is not None:
            await state.requests.put(None)
            state.call.cancel()

    async def op_read_shard(
        self,
        stream: str,
        shard_id: int,
        offset: Any = "earliest",
        max_records: int = 100,
        timeout_ms: int = 500,
    ) -> dict[str, Any]:
        reader_id = f"raw-{uuid.uuid4().hex[:12]}"
        stub = self.stub()
        await stub.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName=stream,
                shardId=shard_id,
                readerId=reader_id,
                shardOffset=shard_offset(offset),
                timeout=timeout_ms,
            ),
            timeout=CALL_TIMEOUT,
        )
        records: list[dict[str, Any]] = []
        try:
            for _ in range(100_000):
                answer = await stub.ReadShard(
                    api.ReadShardRequest(readerId=reader_id, maxRecords=max_records),
                    timeout=CALL_TIMEOUT + timeout_ms / 1000,
                )
                if not answer.receivedRecords:
                    break
                for received in answer.receivedRecords:
                    records.extend(decoded(received))
        finally:
            await self.delete_reader(reader_id)
        return {"records": records}

    async def delete_reader(self, reader_id: str) -> None:
        """Clean-up after a read: what was read stays read even when this fails (the reader's
        owner may have died meanwhile), so a failure is only logged."""
        try:
            # DeleteShardReader is ownership-checked (§3): ask the reader's owner.
            owner = await self.ask(
                "LookupShardReader", api.LookupShardReaderRequest(readerId=reader_id)
            )
            await self.stub(wire.endpoint_of(owner.serverNode)).DeleteShardReader(
                api.DeleteShardReaderRequest(readerId=reader_id), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as error:
            print(f"[raw] reader {reader_id} not deleted: {error_text(error)}", file=sys.stderr)

    async def op_describe_cluster(self) -> dict[str, Any]:
        answer = await self.ask("DescribeCluster", Empty())
        states = {s.node.id: api.NodeState.Name(s.state) for s in answer.serverNodesStatus}
        return {
            "nodes": [
                {"id": n.id, "host": n.host, "port": n.port, "state": states.get(n.id, "Unknown")}
                for n in answer.serverNodes
            ]
        }

    async def op_close(self) -> dict[str, Any]:
        for state in self.consumers.values():
            state.call.cancel()
        for channel in self.channels.values():
            await channel.close()
        return {}


if __name__ == "__main__":
    RawDriver().main()
