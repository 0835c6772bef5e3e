"""Driver for the official Python client, `hstreamdb` (its `hstreamdb.aio` API only).

Run as `python -m harness.clients.python_driver`; speaks PROTOCOL.md on stdin/stdout.
Nothing here reaches into the client's private members: where its public API has no way to
do something (a bootstrap URL list, attributes on append, DescribeCluster, lookups) the op
answers UNSUPPORTED and the suites report that as what the client offers, not as a pass.
Client errors are passed through untouched so findings quote the client's own words.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from HStream.Server import HStreamApi_pb2 as api
from hstreamdb.aio.client import HStreamDBClient, insecure_client
from hstreamdb.types import RecordId, SpecialOffset

from harness.clients.driver_loop import DriverLoop, Unsupported, collect, encode_payload, record_out


class Consumer:
    """One official `Consumer` task, its received records and the ack callback it gave us."""

    def __init__(self) -> None:
        self.records: asyncio.Queue[Any] = asyncio.Queue()
        self.ack: Any = None
        self.stop: Any = None
        self.task: asyncio.Task[None] | None = None


def shard_offset(offset: Any) -> api.ShardOffset:
    if offset in (None, "earliest"):
        return api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST)
    if offset == "latest":
        return api.ShardOffset(specialOffset=api.SpecialOffset.LATEST)
    if "record_id" in offset:
        shard, batch, index = offset["record_id"]
        return api.ShardOffset(
            recordOffset=api.RecordId(shardId=shard, batchId=batch, batchIndex=index)
        )
    return api.ShardOffset(
        timestampOffset=api.TimestampOffset(timestampInMs=offset["timestamp_ms"])
    )


class PythonDriver(DriverLoop):
    name = "python"
    # hstreamdb 0.5.0 passes no timeout to its gRPC calls (see DriverLoop.op_deadline_s).
    op_deadline_s = 15.0

    def __init__(self) -> None:
        self.client: HStreamDBClient | None = None
        self.consumers: dict[tuple[str, str], Consumer] = {}

    def connected(self) -> HStreamDBClient:
        if self.client is None:
            raise Unsupported("not connected: send `connect` first")
        return self.client

    async def op_connect(self, urls: list[str], token: str | None = None) -> dict[str, Any]:
        if token:
            # hstreamdb 0.5.0's insecure_client/secure_client take no token or call
            # metadata (hstreamdb/aio/client.py), so it cannot talk to a token cluster.
            raise Unsupported("hstreamdb 0.5.0 has no way to send a token (authorization)")
        # The client's constructor takes one address; it learns the others from
        # DescribeCluster. A list is not something it can be given, so only the first is.
        self.client = await insecure_client(url=f"hstream://{urls[0]}")
        return {"nodes": [], "used": urls[0]}

    async def op_create_stream(self, stream: str, shards: int = 1, replication_factor: int = 1):
        await self.connected().create_stream(
            stream, replication_factor=replication_factor, shard_count=shards
        )

    async def op_delete_stream(self, stream: str, force: bool = False, ignore_non_exist=False):
        await self.connected().delete_stream(stream, ignore_non_exist=ignore_non_exist, force=force)

    async def op_list_streams(self) -> dict[str, Any]:
        return {"streams": [s.name for s in await self.connected().list_streams()]}

    async def op_list_shards(self, stream: str) -> dict[str, Any]:
        shards = await self.connected().list_shards(stream)
        return {
            "shards": [{"shard_id": s.id, "start": str(s.start), "end": str(s.end)} for s in shards]
        }

    async def op_append(
        self, stream: str, records: list[dict[str, Any]], key: str = "", compression="none"
    ) -> dict[str, Any]:
        if any(record.get("attributes") for record in records):
            raise Unsupported("hstreamdb's append() takes no record attributes")
        payloads = [encode_payload(record) for record in records]
        try:
            ids = await self.connected().append(
                stream,
                payloads,
                key=key or None,
                compresstype=None if compression == "none" else compression,
            )
        except KeyError as error:
            if "CompressionType" in str(error):  # the client's own refusal, before sending
                raise Unsupported(
                    f"hstreamdb refuses compression {compression!r}: {error}"
                ) from error
            raise
        return {"record_ids": [[i.shard_id, i.batch_id, i.batch_index] for i in ids]}

    async def op_subscribe(
        self,
        subscription: str,
        stream: str,
        ack_timeout: int = 30,
        max_unacked: int = 10_000,
        offset: str = "earliest",
    ) -> None:
        await self.connected().create_subscription(
            subscription,
            stream,
            ack_timeout=ack_timeout,
            max_unacks=max_unacked,
            offset=SpecialOffset.EARLIEST if offset == "earliest" else SpecialOffset.LATEST,
        )

    async def op_delete_subscription(self, subscription: str, force: bool = False) -> None:
        await self.connected().delete_subscription(subscription, force=force)

    def consumer_for(self, subscription: str, consumer: str) -> Consumer:
        key = (subscription, consumer)
        state = self.consumers.get(key)
        if state is not None and state.task is not None and state.task.done():
            # A consumer that ended (error or server close) is surfaced once, then replaced
            # the way an application would: by starting a new one.
            self.consumers.pop(key)
            error = state.task.exception()
            if error is not None:
                raise error
            state = None
        if state is None:
            state = Consumer()

            async def process(ack, stop, records) -> None:  # type: ignore[no-untyped-def]
                state.ack, state.stop = ack, stop
                for record in records:  # decoding happens here, inside the client
                    await state.records.put(record)

            client_consumer = self.connected().new_consumer(consumer, subscription, process)
            state.task = asyncio.create_task(client_consumer.start())
            self.consumers[key] = state
        return state

    async def op_fetch(
        self,
        subscription: str,
        consumer: str,
        max: int = 100,
        timeout_ms: int = 1000,
        ack: bool = True,
    ) -> dict[str, Any]:
        state = self.consumer_for(subscription, consumer)
        got = await collect(state.records, max, timeout_ms / 1000)
        if not got and state.task is not None and state.task.done():
            self.consumer_for(subscription, consumer)  # raises the consumer's error if any
        if ack and got:
            await state.ack([r.id for r in got])
        return {
            "records": [
                record_out(tuple(r.id), r.header.key, r.payload, dict(r.header.attributes))
                for r in got
            ]
        }

    async def op_ack(self, subscription: str, consumer: str, record_ids: list[list[int]]) -> None:
        state = self.consumers.get((subscription, consumer))
        if state is None or state.ack is None:
            raise Unsupported(f"no running consumer {consumer} on {subscription}")
        await state.ack([RecordId(*rid) for rid in record_ids])

    async def op_stop_consumer(self, subscription: str, consumer: str) -> None:
        state = self.consumers.pop((subscription, consumer), None)
        if state and state.task:
            if state.stop is not None:
                await state.stop()
            state.task.cancel()

    async def op_read_shard(
        self,
        stream: str,
        shard_id: int,
        offset: Any = "earliest",
        max_records: int = 100,
        timeout_ms: int = 500,
    ) -> dict[str, Any]:
        client = self.connected()
        reader_id = f"drv-{uuid.uuid4().hex[:12]}"
        records: list[dict[str, Any]] = []
        async with client.with_reader(
            stream, reader_id, shard_offset(offset), timeout_ms, shard_id=shard_id
        ) as reader:
            for _ in range(100_000):
                batch = list(await reader.read(max_records))
                if not batch:
                    break
                records.extend(
                    record_out(tuple(r.id), r.header.key, r.payload, dict(r.header.attributes))
                    for r in batch
                )
        return {"records": records}

    async def op_describe_cluster(self) -> None:
        raise Unsupported("hstreamdb has no public DescribeCluster call")

    async def op_lookup_shard(self, shard_id: int) -> None:
        raise Unsupported("hstreamdb has no public lookup call")

    async def op_close(self) -> dict[str, Any]:
        for state in self.consumers.values():
            if state.task:
                state.task.cancel()
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
        return {}


if __name__ == "__main__":
    PythonDriver().main()
