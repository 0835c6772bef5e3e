"""HStreamApi over raw gRPC against a real single-node reference server: streams, shards,
appends and reads with every compression, shard readers with every offset kind, the
streaming reads, errors as JSON statuses, UNIMPLEMENTED."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from refcluster_launcher import RefCluster

from refserver import records
from refserver.api.catalog import KEY_SPACE_MAX, key_hash

pytestmark = pytest.mark.slow

EARLIEST = api.ShardOffset(specialOffset=api.SpecialOffset.Value("EARLIEST"))
LATEST = api.ShardOffset(specialOffset=api.SpecialOffset.Value("LATEST"))


@pytest.fixture(scope="module")
def stub(node1: RefCluster) -> Iterator[api_grpc.HStreamApiStub]:
    with grpc.insecure_channel(node1.nodes[0].url) as channel:
        yield api_grpc.HStreamApiStub(channel)


def error_of(call: grpc.RpcError) -> tuple[grpc.StatusCode, int]:
    details = json.loads(call.details())
    return call.code(), details["error"]


def expect_error(status: grpc.StatusCode, code: int, rpc, request) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        rpc(request)
    assert error_of(raised.value) == (status, code), raised.value.details()


def create(stub: api_grpc.HStreamApiStub, name: str, shards: int = 1) -> list[api.Shard]:
    stub.CreateStream(api.Stream(streamName=name, replicationFactor=1, shardCount=shards))
    return list(stub.ListShards(api.ListShardsRequest(streamName=name)).shards)


def batch(
    values: list[bytes], key: str = "k", compression: int = records.NONE
) -> api.BatchedRecord:
    return records.encode(
        [
            api.HStreamRecord(
                header=api.HStreamRecordHeader(flag=api.HStreamRecordHeader.Flag.RAW, key=key),
                payload=value,
            )
            for value in values
        ],
        compression,
    )


def test_stream_crud_and_name_rules(stub: api_grpc.HStreamApiStub) -> None:
    before = int(time.time())
    made = stub.CreateStream(
        api.Stream(streamName="crud-1", replicationFactor=3, backlogDuration=60, shardCount=2)
    )
    assert made.streamName == "crud-1" and made.shardCount == 2
    assert made.creationTime.seconds >= before - 1
    got = stub.GetStream(api.GetStreamRequest(name="crud-1")).stream
    assert (got.replicationFactor, got.backlogDuration) == (3, 60)
    stub.CreateStream(api.Stream(streamName="crud_2", replicationFactor=1, shardCount=1))
    names = {s.streamName for s in stub.ListStreams(api.ListStreamsRequest()).streams}
    assert {"crud-1", "crud_2"} <= names
    prefixed = stub.ListStreamsWithPrefix(api.ListStreamsWithPrefixRequest(prefix="crud-"))
    assert [s.streamName for s in prefixed.streams] == ["crud-1"]

    duplicate = api.Stream(streamName="crud-1", replicationFactor=1, shardCount=1)
    expect_error(grpc.StatusCode.ALREADY_EXISTS, 201, stub.CreateStream, duplicate)
    for bad in ["", "1abc", "a b", "a.b", "x" * 256]:
        request = api.Stream(streamName=bad, replicationFactor=1, shardCount=1)
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, 204, stub.CreateStream, request)
    no_shards = api.Stream(streamName="ok", replicationFactor=1, shardCount=0)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 205, stub.CreateStream, no_shards)
    no_replicas = api.Stream(streamName="ok", replicationFactor=0, shardCount=1)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 203, stub.CreateStream, no_replicas)

    stub.DeleteStream(api.DeleteStreamRequest(streamName="crud-1"))
    missing = api.GetStreamRequest(name="crud-1")
    expect_error(grpc.StatusCode.NOT_FOUND, 200, stub.GetStream, missing)
    gone = api.DeleteStreamRequest(streamName="crud-1")
    expect_error(grpc.StatusCode.NOT_FOUND, 200, stub.DeleteStream, gone)
    stub.DeleteStream(api.DeleteStreamRequest(streamName="crud-1", ignoreNonExist=True))
    # The real server's quirk: ListShards of an unknown stream is UNAVAILABLE.
    unknown = api.ListShardsRequest(streamName="crud-1")
    expect_error(grpc.StatusCode.UNAVAILABLE, 200, stub.ListShards, unknown)


def test_delete_stream_with_subscription_needs_force(stub: api_grpc.HStreamApiStub) -> None:
    create(stub, "subbed")
    stub.CreateSubscription(
        api.Subscription(subscriptionId="subbed-sub", streamName="subbed", ackTimeoutSeconds=5)
    )
    request = api.DeleteStreamRequest(streamName="subbed")
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, 202, stub.DeleteStream, request)
    stub.DeleteStream(api.DeleteStreamRequest(streamName="subbed", force=True))
    assert "subbed" not in {
        s.streamName for s in stub.ListStreams(api.ListStreamsRequest()).streams
    }


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shard_key_ranges_split_evenly(stub: api_grpc.HStreamApiStub, count: int) -> None:
    shards = create(stub, f"ranges-{count}", count)
    step = KEY_SPACE_MAX // count
    bounds = [(int(s.startHashRangeKey), int(s.endHashRangeKey)) for s in shards]
    expected = [(i * step, i * step + step - 1) for i in range(count)]
    expected[-1] = (expected[-1][0], KEY_SPACE_MAX)
    assert sorted(bounds) == expected
    assert all(s.isActive and s.epoch == count for s in shards)
    assert len({s.shardId for s in shards}) == count


@pytest.mark.parametrize("compression", [records.NONE, records.GZIP, records.ZSTD])
def test_append_ids_and_read_back(stub: api_grpc.HStreamApiStub, compression: int) -> None:
    name = f"append-{compression}"
    shards = create(stub, name, 2)
    key = "user-42"
    target = next(
        s for s in shards if int(s.startHashRangeKey) <= key_hash(key) <= int(s.endHashRangeKey)
    )
    sent = [[b"a", b"b", b"c"], [b"d"], [b"e", b"f"]]
    answers = [
        stub.Append(
            api.AppendRequest(
                streamName=name, shardId=target.shardId, records=batch(values, key, compression)
            )
        )
        for values in sent
    ]
    batch_ids = []
    for values, answer in zip(sent, answers, strict=True):
        ids = [(r.shardId, r.batchIndex) for r in answer.recordIds]
        assert ids == [(target.shardId, i) for i in range(len(values))]
        assert len({r.batchId for r in answer.recordIds}) == 1
        batch_ids.append(answer.recordIds[0].batchId)
    assert batch_ids == sorted(batch_ids) and batch_ids[0] >= 1

    tail = stub.GetTailRecordId(
        api.GetTailRecordIdRequest(streamName=name, shardId=target.shardId)
    ).tailRecordId
    assert tail.batchId == batch_ids[-1]

    stub.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=name, shardId=target.shardId, shardOffset=EARLIEST, readerId=f"rd-{name}"
        )
    )
    read = stub.ReadShard(api.ReadShardRequest(readerId=f"rd-{name}", maxRecords=10))
    assert len(read.receivedRecords) == 3
    for values, answer, received in zip(sent, answers, read.receivedRecords, strict=True):
        assert list(received.recordIds) == list(answer.recordIds)
        assert received.record.compressionType == compression
        assert [r.payload for r in records.decode(received.record)] == values
        assert received.record.publishTime.seconds > 0  # the store's append time


def test_append_errors(stub: api_grpc.HStreamApiStub) -> None:
    (shard,) = create(stub, "append-errors")
    empty = api.AppendRequest(streamName="append-errors", shardId=shard.shardId)
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 206, stub.Append, empty)
    zero = api.AppendRequest(
        streamName="append-errors",
        shardId=shard.shardId,
        records=api.BatchedRecord(batchSize=0, payload=b"x"),
    )
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 206, stub.Append, zero)
    huge = api.AppendRequest(
        streamName="append-errors", shardId=shard.shardId, records=batch([b"x" * (1024 * 1024 + 1)])
    )
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 207, stub.Append, huge)
    stub.DeleteStream(api.DeleteStreamRequest(streamName="append-errors"))
    after_delete = api.AppendRequest(
        streamName="append-errors", shardId=shard.shardId, records=batch([b"late"])
    )
    expect_error(grpc.StatusCode.NOT_FOUND, 200, stub.Append, after_delete)


def test_shard_readers_every_offset_kind(stub: api_grpc.HStreamApiStub) -> None:
    (shard,) = create(stub, "offsets")
    ids = []
    stamps = []
    for i in range(6):
        answer = stub.Append(
            api.AppendRequest(
                streamName="offsets", shardId=shard.shardId, records=batch([b"%d" % i])
            )
        )
        ids.append(answer.recordIds[0])
        stamps.append(int(time.time() * 1000))
        time.sleep(0.05)

    def reader(reader_id: str, offset: api.ShardOffset, timeout: int = 0) -> None:
        stub.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName="offsets",
                shardId=shard.shardId,
                shardOffset=offset,
                readerId=reader_id,
                timeout=timeout,
            )
        )

    def read(reader_id: str, most: int = 100) -> list[int]:
        got = stub.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=most))
        return [r.recordIds[0].batchId for r in got.receivedRecords]

    batch_ids = [r.batchId for r in ids]
    reader("from-earliest", EARLIEST)
    assert read("from-earliest", 4) == batch_ids[:4], "maxRecords bounds the batches"
    assert read("from-earliest") == batch_ids[4:], "the position advances"
    reader("from-record", api.ShardOffset(recordOffset=ids[2]))
    assert read("from-record") == batch_ids[2:]
    reader(
        "from-time",
        api.ShardOffset(timestampOffset=api.TimestampOffset(timestampInMs=stamps[3])),
    )
    assert read("from-time") == batch_ids[4:]
    reader("from-latest", LATEST, timeout=300)
    started = time.monotonic()
    assert read("from-latest") == []
    assert time.monotonic() - started >= 0.25, "an empty read waits for the reader's timeout"
    stub.Append(
        api.AppendRequest(streamName="offsets", shardId=shard.shardId, records=batch([b"new"]))
    )
    assert read("from-latest") == [batch_ids[-1] + 1]

    assert {"from-earliest", "from-record", "from-time", "from-latest"} <= set(
        stub.ListShardReaders(api.ListShardReadersRequest()).readerId
    )
    duplicate = api.CreateShardReaderRequest(
        streamName="offsets", shardId=shard.shardId, shardOffset=EARLIEST, readerId="from-record"
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.CreateShardReader(duplicate)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    no_offset = api.CreateShardReaderRequest(
        streamName="offsets", shardId=shard.shardId, readerId="no-offset"
    )
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, 208, stub.CreateShardReader, no_offset)
    with pytest.raises(grpc.RpcError) as raised:
        stub.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName="offsets", shardId=12345, shardOffset=EARLIEST, readerId="no-shard"
            )
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    # A single node owns every reader, so deleting passes the ownership check.
    stub.DeleteShardReader(api.DeleteShardReaderRequest(readerId="from-record"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ReadShard(api.ReadShardRequest(readerId="from-record", maxRecords=1))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_trim_shard_moves_earliest(stub: api_grpc.HStreamApiStub) -> None:
    (shard,) = create(stub, "trimmed")
    ids = [
        stub.Append(
            api.AppendRequest(
                streamName="trimmed", shardId=shard.shardId, records=batch([b"%d" % i])
            )
        ).recordIds[0]
        for i in range(4)
    ]
    stub.TrimShard(
        api.TrimShardRequest(
            streamName="trimmed",
            shardId=shard.shardId,
            trimPoint=api.ShardOffset(recordOffset=ids[1]),
        )
    )
    stub.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName="trimmed", shardId=shard.shardId, shardOffset=EARLIEST, readerId="after-trim"
        )
    )
    got = stub.ReadShard(api.ReadShardRequest(readerId="after-trim", maxRecords=10))
    assert [r.recordIds[0].batchId for r in got.receivedRecords] == [ids[2].batchId, ids[3].batchId]


def test_streaming_reads(stub: api_grpc.HStreamApiStub) -> None:
    shards = create(stub, "streamed", 2)
    appended: dict[int, list[int]] = {s.shardId: [] for s in shards}
    for i in range(10):
        shard = shards[i % 2]
        answer = stub.Append(
            api.AppendRequest(
                streamName="streamed",
                shardId=shard.shardId,
                records=batch([b"v%d" % i], key=f"k{i}"),
            )
        )
        appended[shard.shardId].append(answer.recordIds[0].batchId)
    first = shards[0].shardId

    got = [
        r.recordIds[0].batchId
        for response in stub.ReadShardStream(
            api.ReadShardStreamRequest(
                shardId=first, **{"from": EARLIEST}, until=LATEST, maxReadBatches=100
            ),
            timeout=10,
        )
        for r in response.receivedRecords
    ]
    assert got == appended[first]

    limited = [
        r
        for response in stub.ReadShardStream(
            api.ReadShardStreamRequest(shardId=first, **{"from": EARLIEST}, maxReadBatches=2),
            timeout=10,
        )
        for r in response.receivedRecords
    ]
    assert len(limited) == 2

    everything: dict[int, list[int]] = {s.shardId: [] for s in shards}
    for response in stub.ReadStream(
        api.ReadStreamRequest(
            streamName="streamed",
            **{"from": api.StreamOffset(specialOffset=api.SpecialOffset.Value("EARLIEST"))},
            until=api.StreamOffset(specialOffset=api.SpecialOffset.Value("LATEST")),
        ),
        timeout=10,
    ):
        for r in response.receivedRecords:
            everything[r.recordIds[0].shardId].append(r.recordIds[0].batchId)
    assert everything == appended

    (single,) = create(stub, "single")
    stub.Append(
        api.AppendRequest(streamName="single", shardId=single.shardId, records=batch([b"1"]))
    )
    one = list(
        stub.ReadSingleShardStream(
            api.ReadSingleShardStreamRequest(
                streamName="single", **{"from": EARLIEST}, until=LATEST
            ),
            timeout=10,
        )
    )
    assert sum(len(r.receivedRecords) for r in one) == 1


def test_read_stream_by_key_filters_and_decompresses(stub: api_grpc.HStreamApiStub) -> None:
    (shard,) = create(stub, "bykey")
    for i in range(3):
        stub.Append(
            api.AppendRequest(
                streamName="bykey",
                shardId=shard.shardId,
                records=records.encode(
                    [
                        api.HStreamRecord(
                            header=api.HStreamRecordHeader(key="mine"), payload=b"m%d" % i
                        ),
                        api.HStreamRecord(
                            header=api.HStreamRecordHeader(key="other"), payload=b"o"
                        ),
                    ],
                    records.GZIP,
                ),
            )
        )
    request = api.ReadStreamByKeyRequest(
        streamName="bykey", key="mine", **{"from": EARLIEST}, until=LATEST, readRecordCount=10
    )
    payloads = [
        record.payload
        for response in stub.ReadStreamByKey(iter([request]), timeout=10)
        for record in response.receivedRecords
    ]
    assert payloads == [b"m0", b"m1", b"m2"]


def test_cluster_rpcs_on_one_node(stub: api_grpc.HStreamApiStub, node1: RefCluster) -> None:
    node = node1.nodes[0]
    assert stub.Echo(api.EchoRequest(msg="hello")).msg == "hello"
    described = stub.DescribeCluster(empty_pb2.Empty())
    assert described.protocolVersion == "0.1.0"
    assert [(n.id, n.host, n.port) for n in described.serverNodes] == [(1, node.host, node.port)]
    assert [s.state for s in described.serverNodesStatus] == [api.NodeState.Value("Running")]
    looked = stub.LookupShard(api.LookupShardRequest(shardId=77))
    assert looked.shardId == 77 and looked.serverNode.id == 1
    assert stub.LookupKey(api.LookupKeyRequest(partitionKey="k")).id == 1
    assert (
        stub.LookupSubscription(api.LookupSubscriptionRequest(subscriptionId="s")).subscriptionId
        == "s"
    )
    assert stub.LookupShardReader(api.LookupShardReaderRequest(readerId="r")).readerId == "r"
    resource = api.LookupResourceRequest(resType=api.ResourceType.Value("ResShard"), resId="77")
    assert stub.LookupResource(resource).id == 1
    status = json.loads(
        stub.SendAdminCommand(api.AdminCommandRequest(command="server status")).result
    )
    assert status["type"] == "table"
    ready = json.loads(
        stub.SendAdminCommand(api.AdminCommandRequest(command="server ready")).result
    )
    assert ready == {"type": "plain", "content": "Cluster is ready"}


def test_other_rpcs_are_unimplemented_by_name(stub: api_grpc.HStreamApiStub) -> None:
    for rpc, request, name in [
        (stub.ListViews, api.ListViewsRequest(), "ListViews"),
        (stub.ExecuteQuery, api.CommandQuery(), "ExecuteQuery"),
        (stub.ParseSql, api.ParseSqlRequest(), "ParseSql"),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            rpc(request)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert name in raised.value.details()


def test_large_batches_are_split_across_answers_under_the_client_limit(
    stub: api_grpc.HStreamApiStub,
) -> None:
    (shard,) = create(stub, "large")
    big = 900 * 1024  # under the 1 MiB record limit; eight of them exceed gRPC's 4 MiB
    written = [
        stub.Append(
            api.AppendRequest(
                streamName="large", shardId=shard.shardId, records=batch([bytes([i]) * big])
            )
        )
        .recordIds[0]
        .batchId
        for i in range(8)
    ]
    stub.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName="large", shardId=shard.shardId, shardOffset=EARLIEST, readerId="large-reader"
        )
    )
    got: list[int] = []
    for _ in range(10):
        answer = stub.ReadShard(api.ReadShardRequest(readerId="large-reader", maxRecords=100))
        assert answer.ByteSize() < 4 * 1024 * 1024
        if not answer.receivedRecords:
            break
        got += [r.recordIds[0].batchId for r in answer.receivedRecords]
    assert got == written
