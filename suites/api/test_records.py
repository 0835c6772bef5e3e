"""Append, record ids, payload kinds, compression, tails and trims (protocol §1)."""

from __future__ import annotations

import time

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import append, expect_error, read_all, shards_of

RAW = api.HStreamRecordHeader.Flag.RAW
JSON = api.HStreamRecordHeader.Flag.JSON


def records(count: int, key: str = "k", size: int = 16) -> list[api.HStreamRecord]:
    return [wire.raw_record(f"{i:0{size}d}".encode(), key=key) for i in range(count)]


@pytest.mark.conformance("api.append.record-ids")
def test_record_ids_per_batch(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    batch_ids = []
    for size in (1, 5, 17):
        answer = append(hstream, stream.streamName, shard.shardId, records(size))
        ids = list(answer.recordIds)
        assert len(ids) == size, f"batch of {size}: {len(ids)} record ids"
        assert [i.batchIndex for i in ids] == list(range(size)), f"indexes {ids}"
        assert {i.shardId for i in ids} == {shard.shardId}, f"shard ids {ids}"
        assert len({i.batchId for i in ids}) == 1, f"one batch, several batch ids: {ids}"
        assert answer.streamName == stream.streamName and answer.shardId == shard.shardId
        batch_ids.append(ids[0].batchId)
    assert batch_ids == sorted(batch_ids) and len(set(batch_ids)) == 3, (
        f"batch ids must strictly increase, got {batch_ids}"
    )
    assert batch_ids[0] >= 1, f"batch id {batch_ids[0]} < 1"


@pytest.mark.conformance("api.append.publish-time")
def test_publish_time_is_the_stores(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    batch = wire.batch(records(3))
    batch.publishTime.FromMilliseconds(1_000)  # 1970: a client clock the server must not keep
    before = time.time() * 1000
    hstream.Append(
        api.AppendRequest(streamName=stream.streamName, shardId=shard.shardId, records=batch)
    )
    after = time.time() * 1000
    [received] = read_all(hstream, stream.streamName, shard.shardId, want_batches=1)
    published = received.record.publishTime.ToMilliseconds()
    # Clocks of test host and server may differ a little; 5 s covers containers on one host.
    assert before - 5_000 <= published <= after + 5_000, (
        f"publishTime {published} ms is not the append time (between {before:.0f} and {after:.0f})"
    )


@pytest.mark.conformance("api.append.size-limit")
def test_oversize_batch_rejected(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    big = [wire.raw_record(b"x" * (1024 * 1024 + 1024))]
    expect_error(
        lambda: append(hstream, stream.streamName, shard.shardId, big),
        grpc.StatusCode.INVALID_ARGUMENT,
        207,
    )


@pytest.mark.conformance("api.append.empty-batch")
@pytest.mark.parametrize("shape", ["batch-size-zero", "empty-payload", "no-records"])
def test_empty_batches_rejected(hstream, make_stream, shape):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    if shape == "batch-size-zero":
        batch = wire.batch(records(2))
        batch.batchSize = 0
        request = api.AppendRequest(
            streamName=stream.streamName, shardId=shard.shardId, records=batch
        )
    elif shape == "empty-payload":
        request = api.AppendRequest(
            streamName=stream.streamName,
            shardId=shard.shardId,
            records=api.BatchedRecord(batchSize=1, payload=b""),
        )
    else:
        request = api.AppendRequest(streamName=stream.streamName, shardId=shard.shardId)
    expect_error(lambda: hstream.Append(request), grpc.StatusCode.INVALID_ARGUMENT, 206)


@pytest.mark.conformance("api.append.unknown-stream")
def test_append_to_unknown_shard_fails(hstream, make_stream, unique):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    unknown_shard = shard.shardId ^ 0x5A5A5A5A5A5A
    try:
        append(hstream, stream.streamName, unknown_shard, records(1))
    except grpc.RpcError:
        pass
    else:
        raise AssertionError(f"append to unknown shard {unknown_shard} succeeded")


@pytest.mark.conformance("api.append.compression")
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compression_roundtrip(hstream, make_stream, compression):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    sent = [wire.raw_record(bytes([i % 256]) * (i + 1), key=f"key-{i}") for i in range(50)]
    answer = append(hstream, stream.streamName, shard.shardId, sent, compression)
    [received] = read_all(hstream, stream.streamName, shard.shardId, want_batches=1)
    assert received.record.compressionType == wire.COMPRESSIONS[compression], (
        f"compression type {received.record.compressionType}, sent {compression}"
    )
    assert list(received.recordIds) == list(answer.recordIds)
    got = wire.unbatch(received.record)
    assert [(r.payload, r.header.key) for r in got] == [(r.payload, r.header.key) for r in sent]


@pytest.mark.conformance("api.append.json-payload")
def test_json_records(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    sent = [wire.json_record({"n": i, "name": f"row {i}", "ok": i % 2 == 0}) for i in range(5)]
    append(hstream, stream.streamName, shard.shardId, sent, "gzip")
    [received] = read_all(hstream, stream.streamName, shard.shardId, want_batches=1)
    got = wire.unbatch(received.record)
    assert [r.header.flag for r in got] == [JSON] * 5
    assert [r.payload for r in got] == [r.payload for r in sent], "Struct payload altered"


@pytest.mark.conformance("api.append.attributes-keys")
def test_attributes_and_keys(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    sent = [
        wire.raw_record(b"p", key="ключ-🙂", attributes={"a": "1", "ü": "x" * 300}),
        wire.raw_record(b"q", key="", attributes={}),
    ]
    append(hstream, stream.streamName, shard.shardId, sent)
    [received] = read_all(hstream, stream.streamName, shard.shardId, want_batches=1)
    got = wire.unbatch(received.record)
    assert [(r.header.key, dict(r.header.attributes), r.header.flag) for r in got] == [
        (r.header.key, dict(r.header.attributes), RAW) for r in sent
    ]


@pytest.mark.conformance("api.append.tail")
def test_tail_record_id(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    last = None
    for _ in range(3):
        last = append(hstream, stream.streamName, shard.shardId, records(4)).recordIds[0]
    tail = hstream.GetTailRecordId(
        api.GetTailRecordIdRequest(streamName=stream.streamName, shardId=shard.shardId)
    ).tailRecordId
    assert (tail.shardId, tail.batchId) == (shard.shardId, last.batchId), (
        f"tail {tail}, last appended batch {last}"
    )


@pytest.mark.conformance("api.append.trim")
def test_trim_shard(hstream, make_stream):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    ids = [
        append(hstream, stream.streamName, shard.shardId, records(2)).recordIds[0] for _ in range(4)
    ]
    hstream.TrimShard(
        api.TrimShardRequest(
            streamName=stream.streamName,
            shardId=shard.shardId,
            trimPoint=api.ShardOffset(recordOffset=ids[1]),
        )
    )
    left = read_all(hstream, stream.streamName, shard.shardId, want_batches=2)
    assert [b.recordIds[0].batchId for b in left] == [ids[2].batchId, ids[3].batchId], (
        f"after trimming at {ids[1].batchId}, earliest read gave "
        f"{[b.recordIds[0].batchId for b in left]}"
    )


@pytest.mark.conformance("api.keys.md5-rule")
def test_keys_land_in_md5_shard(hstream, make_stream):
    """Append each key to the shard the MD5 rule names; the server's ranges must agree."""
    stream = make_stream(shards=4)
    shards = shards_of(hstream, stream.streamName)
    keys = [f"user-{i}" for i in range(40)] + ["", "🙂", "a" * 1000]
    expected: dict[int, list[str]] = {}
    for key in keys:
        shard = wire.shard_for_key(shards, key)
        append(hstream, stream.streamName, shard.shardId, [wire.raw_record(b"v", key=key)])
        expected.setdefault(shard.shardId, []).append(key)
    assert len(expected) > 1, "40 keys all hashed into one of 4 shards: ranges are not even"
    for shard_id, shard_keys in expected.items():
        got = read_all(hstream, stream.streamName, shard_id, want_batches=len(shard_keys))
        seen = [wire.unbatch(b.record)[0].header.key for b in got]
        assert seen == shard_keys, f"shard {shard_id}: keys {seen}, want {shard_keys}"
