"""A real 3-node reference cluster driven by the OFFICIAL `hstreamdb` Python client:
10,000 records across many keys (buffered producer without compression, direct appends
with gzip) into a 4-shard stream, read back byte-for-byte and in per-shard order through
shard readers and through a subscription; plus cluster-wide agreement of DescribeCluster
and lookups, and the WrongServer check."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from hstreamdb import insecure_client
from hstreamdb.types import SpecialOffset
from refcluster_launcher import RefCluster, launch, node_proc, wait_cluster_size

pytestmark = pytest.mark.slow

STREAM = "official-4"
KEYS = [f"key-{i}" for i in range(200)]
PRODUCER_RECORDS = 5_000
GZIP_RECORDS = 5_000
GZIP_BATCH = 50


def payload(source: str, key: str, seq: int) -> bytes:
    # Unique and self-describing: the check can tell which append a record came from.
    return f"{source}|{key}|{seq:05d}|".encode() + bytes(range(seq % 7, seq % 7 + 20))


@pytest.fixture(scope="module")
def written(cluster3: RefCluster) -> dict[bytes, Any]:
    """Write the records with the official client; returns payload → record id."""
    node = cluster3.nodes[0]

    async def write() -> dict[bytes, Any]:
        acked: dict[bytes, Any] = {}
        async with await insecure_client(host=node.host, port=node.port) as client:
            await client.create_stream(STREAM, shard_count=4)

            class Callback:
                def on_success(self, stream_name: str, payloads: list[Any], shard: int) -> None:
                    for p in payloads:
                        acked[p.payload] = shard

                def on_fail(
                    self, stream_name: str, payloads: list[Any], shard: int, e: Exception
                ) -> None:
                    raise AssertionError(f"append of {len(payloads)} records failed: {e!r}")

            producer = client.new_producer(
                append_callback=Callback(), size_trigger=4096, time_trigger=0.05, workers=4
            )
            for i in range(PRODUCER_RECORDS):
                key = KEYS[i % len(KEYS)]
                await producer.append(STREAM, payload("buffered", key, i), key=key)
            await producer.wait_and_close()

            per_key: dict[str, int] = defaultdict(int)
            for start in range(0, GZIP_RECORDS, GZIP_BATCH):
                key = KEYS[(start // GZIP_BATCH) % len(KEYS)]
                values = []
                for _ in range(GZIP_BATCH):
                    values.append(payload("gzip", key, per_key[key]))
                    per_key[key] += 1
                ids = list(await client.append(STREAM, values, key=key, compresstype="gzip"))
                assert len(ids) == len(values)
                for value, record_id in zip(values, ids, strict=True):
                    acked[value] = record_id.shard_id
        return acked

    acked = asyncio.run(write())
    assert len(acked) == PRODUCER_RECORDS + GZIP_RECORDS, "some appends were not acknowledged"
    return acked


def check_order(records: list[tuple[int, int, int, bytes]]) -> None:
    """Per shard the (batchId, batchIndex) ids strictly increase; per source and key the
    sequence numbers increase (the producer keeps a key's order)."""
    last_id: dict[int, tuple[int, int]] = {}
    last_seq: dict[tuple[str, str], int] = {}
    for shard, batch_id, index, value in records:
        assert (batch_id, index) > last_id.get(shard, (0, -1)), (
            f"shard {shard}: id {(batch_id, index)} after {last_id.get(shard)}"
        )
        last_id[shard] = (batch_id, index)
        source, key, seq_text, _ = value.split(b"|", 3)
        seq = int(seq_text)
        where = (source.decode(), key.decode())
        assert seq > last_seq.get(where, -1), f"{where}: seq {seq} after {last_seq.get(where)}"
        last_seq[where] = seq


def test_shard_readers_return_every_record_in_order(
    cluster3: RefCluster, written: dict[bytes, Any]
) -> None:
    node = cluster3.nodes[1]  # a different entry node than the writer's

    async def read() -> dict[int, list[tuple[int, int, int, bytes]]]:
        found: dict[int, list[tuple[int, int, int, bytes]]] = {}
        async with await insecure_client(host=node.host, port=node.port) as client:
            shards = await client.list_shards(STREAM)
            assert len(shards) == 4
            for shard in shards:
                reader_id = f"check-{shard.id}"
                await client.create_reader(
                    STREAM,
                    reader_id,
                    api.ShardOffset(specialOffset=SpecialOffset.EARLIEST),
                    200,
                    shard_id=shard.id,
                )
                rows: list[tuple[int, int, int, bytes]] = []
                for _ in range(2_000):
                    got = list(await client.read_reader(reader_id, 100))
                    if not got:
                        break
                    rows += [
                        (r.id.shard_id, r.id.batch_id, r.id.batch_index, r.payload) for r in got
                    ]
                found[shard.id] = rows
                await client.delete_reader(reader_id)
        return found

    found = asyncio.run(read())
    everything = [row for rows in found.values() for row in rows]
    seen = [row[3] for row in everything]
    lost = set(written) - set(seen)
    unexpected = set(seen) - set(written)
    assert not lost and not unexpected, (
        f"lost {len(lost)} (e.g. {sorted(lost)[:3]}), unexpected {len(unexpected)}; "
        f"logs: {cluster3.logs()}"
    )
    assert len(seen) == len(set(seen)), "duplicated records"
    for shard, rows in found.items():
        assert all(row[0] == shard for row in rows)
        assert all(written[row[3]] == shard for row in rows), "record read from another shard"
    for rows in found.values():
        check_order(rows)


def test_subscription_delivers_every_record(
    cluster3: RefCluster, written: dict[bytes, Any]
) -> None:
    node = cluster3.nodes[2]

    async def consume() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()
        async with await insecure_client(host=node.host, port=node.port) as client:
            await client.create_subscription(
                "official-sub", STREAM, ack_timeout=30, offset=SpecialOffset.EARLIEST
            )

            async def process(ack: Any, stop: Any, records: Any) -> None:
                batch = list(records)
                got.extend(r.payload for r in batch)
                await ack([r.id for r in batch])
                if len(set(got)) >= len(written):
                    done.set()

            consumer = client.new_consumer("official-consumer", "official-sub", process)
            task = asyncio.create_task(consumer.start())
            try:
                await asyncio.wait_for(done.wait(), timeout=120)
            except TimeoutError:
                pass
            finally:
                await consumer._stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return got

    got = asyncio.run(consume())
    lost = set(written) - set(got)
    assert not lost, f"subscription lost {len(lost)} of {len(written)}; logs: {cluster3.logs()}"
    assert not set(got) - set(written), "unexpected records delivered"


@pytest.fixture(scope="module")
def stubs(cluster3: RefCluster) -> Iterator[list[api_grpc.HStreamApiStub]]:
    channels = [grpc.insecure_channel(n.url) for n in cluster3.nodes]
    try:
        yield [api_grpc.HStreamApiStub(c) for c in channels]
    finally:
        for channel in channels:
            channel.close()


def test_describe_cluster_self_first_and_agreed(
    cluster3: RefCluster, stubs: list[api_grpc.HStreamApiStub]
) -> None:
    expected = {(n.server_id, n.host, n.port) for n in cluster3.nodes}
    for node, stub in zip(cluster3.nodes, stubs, strict=True):
        described = stub.DescribeCluster(empty_pb2.Empty())
        listed = [(n.id, n.host, n.port) for n in described.serverNodes]
        assert listed[0] == (node.server_id, node.host, node.port), "self must come first"
        assert set(listed) == expected
        running = api.NodeState.Value("Running")
        assert all(s.state == running for s in described.serverNodesStatus)


def test_lookups_agree_on_every_node(stubs: list[api_grpc.HStreamApiStub]) -> None:
    for i in range(20):
        owners = {
            (
                stub.LookupShard(api.LookupShardRequest(shardId=1000 + i)).serverNode.id,
                stub.LookupSubscription(
                    api.LookupSubscriptionRequest(subscriptionId=f"sub-{i}")
                ).serverNode.id,
                stub.LookupShardReader(
                    api.LookupShardReaderRequest(readerId=f"rd-{i}")
                ).serverNode.id,
                stub.LookupKey(api.LookupKeyRequest(partitionKey=f"key-{i}")).id,
            )
            for stub in stubs
        }
        assert len(owners) == 1, f"nodes disagree on the owners of resource #{i}: {owners}"
    spread = {
        stubs[0].LookupShard(api.LookupShardRequest(shardId=1000 + i)).serverNode.id
        for i in range(20)
    }
    assert len(spread) > 1, "20 shards all owned by one node: the hash ignores the members"


def test_delete_reader_on_a_non_owner_is_wrong_server(
    cluster3: RefCluster, stubs: list[api_grpc.HStreamApiStub]
) -> None:
    stream = "owned"
    stubs[0].CreateStream(api.Stream(streamName=stream, replicationFactor=1, shardCount=1))
    (shard,) = stubs[0].ListShards(api.ListShardsRequest(streamName=stream)).shards
    stubs[0].CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream,
            shardId=shard.shardId,
            shardOffset=api.ShardOffset(specialOffset=SpecialOffset.EARLIEST),
            readerId="owned-reader",
        )
    )
    owner = stubs[0].LookupShardReader(api.LookupShardReaderRequest(readerId="owned-reader"))
    other = next(i for i, n in enumerate(cluster3.nodes) if n.server_id != owner.serverNode.id)
    with pytest.raises(grpc.RpcError) as raised:
        stubs[other].DeleteShardReader(api.DeleteShardReaderRequest(readerId="owned-reader"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = json.loads(raised.value.details())
    assert details["error"] == 800 and details["extra"]["id"] == owner.serverNode.id
    mine = next(i for i, n in enumerate(cluster3.nodes) if n.server_id == owner.serverNode.id)
    stubs[mine].DeleteShardReader(api.DeleteShardReaderRequest(readerId="owned-reader"))


def test_seeds_wait_for_server_init_through_the_api(tmp_path: Path) -> None:
    """Two seeds start "Starting" and not ready; SendAdminCommand("server init") on one
    makes both ready and Running, as `hadmin server init` does on the real server."""
    with launch(tmp_path, 0) as cluster:
        nodes = [node_proc(cluster, i, "", []) for i in (1, 2)]
        seeds = ",".join(f"{n.host}:{n.internal_port}" for n in nodes)
        for node in nodes:
            node.proc.argv[node.proc.argv.index("--seed-nodes") + 1] = seeds
            cluster.nodes.append(node)
            node.proc.start()
        for node in nodes:
            node.proc.wait_ready()
        channels = [grpc.insecure_channel(n.url) for n in nodes]
        try:
            stubs = [api_grpc.HStreamApiStub(c) for c in channels]

            def admin(stub: api_grpc.HStreamApiStub, command: str) -> dict[str, Any]:
                answer = stub.SendAdminCommand(api.AdminCommandRequest(command=command))
                return dict(json.loads(answer.result))

            starting = api.NodeState.Value("Starting")
            for stub in stubs:
                assert admin(stub, "server ready")["type"] == "error"
                own = stub.DescribeCluster(empty_pb2.Empty()).serverNodesStatus[0]
                assert own.state == starting
                with pytest.raises(grpc.RpcError) as raised:
                    stub.LookupShard(api.LookupShardRequest(shardId=1))
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "server init" in raised.value.details()
            assert admin(stubs[0], "server init")["type"] == "plain"
            deadline = time.monotonic() + 20
            while not all(admin(s, "server ready")["type"] == "plain" for s in stubs):
                assert time.monotonic() < deadline, f"not ready after init; logs {cluster.logs()}"
                time.sleep(0.1)
            wait_cluster_size(cluster, 2)
        finally:
            for channel in channels:
                channel.close()
