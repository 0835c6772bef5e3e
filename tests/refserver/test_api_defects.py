"""The seeded defects this area implements, each shown to break its property on a real
cluster, next to the same scenario without the defect holding it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from refcluster_launcher import launch, retry_unavailable

from refserver import records

pytestmark = pytest.mark.slow

EARLIEST = api.ShardOffset(specialOffset=api.SpecialOffset.Value("EARLIEST"))


def one_shard_stream(stub: api_grpc.HStreamApiStub, name: str) -> int:
    stub.CreateStream(api.Stream(streamName=name, replicationFactor=1, shardCount=1))
    return stub.ListShards(api.ListShardsRequest(streamName=name)).shards[0].shardId


def append(stub: api_grpc.HStreamApiStub, name: str, shard: int, value: bytes) -> int:
    batch = records.encode([api.HStreamRecord(payload=value)])
    answer = stub.Append(api.AppendRequest(streamName=name, shardId=shard, records=batch))
    return answer.recordIds[0].batchId


def read_batch_ids(stub: api_grpc.HStreamApiStub, name: str, shard: int, reader: str) -> list[int]:
    stub.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=name, shardId=shard, shardOffset=EARLIEST, readerId=reader
        )
    )
    got = stub.ReadShard(api.ReadShardRequest(readerId=reader, maxRecords=100), timeout=30)
    return [r.recordIds[0].batchId for r in got.receivedRecords]


@pytest.mark.parametrize("defect", [None, "reorder-reads"])
def test_reorder_reads(tmp_path: Path, defect: str | None) -> None:
    with launch(tmp_path, 1, ["--defect", defect] if defect else []) as cluster:
        with grpc.insecure_channel(cluster.nodes[0].url) as channel:
            stub = api_grpc.HStreamApiStub(channel)
            shard = one_shard_stream(stub, "ordered")
            written = [append(stub, "ordered", shard, b"%d" % i) for i in range(5)]
            read = read_batch_ids(stub, "ordered", shard, "reader")
    if defect:
        assert read == written[::-1], f"reorder-reads should reverse the window: {read}"
    else:
        assert read == written


@pytest.mark.parametrize("defect", [None, "ack-before-durable"])
def test_ack_before_durable_loses_acknowledged_appends(tmp_path: Path, defect: str | None) -> None:
    # The store's flush timer is set far out, so only a durable commit saves an entry.
    with launch(
        tmp_path,
        1,
        ["--defect", defect] if defect else [],
        store_args=["--flush-interval-ms", "60000"],
    ) as cluster:
        with grpc.insecure_channel(cluster.nodes[0].url) as channel:
            stub = api_grpc.HStreamApiStub(channel)
            shard = one_shard_stream(stub, "durable")
            acked = [append(stub, "durable", shard, b"%d" % i) for i in range(10)]
            cluster.store.kill(signal.SIGKILL)
            cluster.store.start()
            cluster.store.wait_ready(occurrence=2)
            survivors = retry_unavailable(
                lambda: read_batch_ids(stub, "durable", shard, "after-crash")
            )
    lost = sorted(set(acked) - set(survivors))
    if defect:
        assert lost == acked, f"with {defect} every unflushed ack should be lost, lost {lost}"
    else:
        assert not lost, f"acknowledged appends lost after a store kill -9: {lost}"


def alive_ids(stub: api_grpc.HStreamApiStub) -> set[int]:
    return {n.id for n in stub.DescribeCluster(empty_pb2.Empty(), timeout=5).serverNodes}


@pytest.mark.parametrize("defect", [None, "stale-owner"])
def test_stale_owner_keeps_resources_on_a_dead_node(tmp_path: Path, defect: str | None) -> None:
    with launch(tmp_path, 3, ["--defect", defect] if defect else []) as cluster:
        with grpc.insecure_channel(cluster.nodes[0].url) as channel:
            stub = api_grpc.HStreamApiStub(channel)

            def owner(reader: str) -> int:
                answer = stub.LookupShardReader(api.LookupShardReaderRequest(readerId=reader))
                return answer.serverNode.id

            # A resource owned by node 3 (the one to kill); its owner is now stored.
            victim = next(r for r in (f"r{i}" for i in range(200)) if owner(r) == 3)
            cluster.nodes[2].proc.kill(signal.SIGKILL)
            deadline = time.monotonic() + 30
            while 3 in alive_ids(stub):
                assert time.monotonic() < deadline, f"node 3 never left; logs {cluster.logs()}"
                time.sleep(0.2)
            after = owner(victim)
    if defect:
        assert after == 3, "stale-owner should keep the dead owner"
    else:
        assert after in (1, 2), f"owner should move off the dead node 3, got {after}"
