"""Shard readers and the stateless read streams (protocol §5)."""

from __future__ import annotations

import time

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import append, delete_reader, expect_error, read_all, shards_of

EARLIEST = api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST)
LATEST = api.ShardOffset(specialOffset=api.SpecialOffset.LATEST)


def write_batches(hstream, stream: str, shard_id: int, count: int, tag: str = "b"):
    """Append `count` two-record batches; return their AppendResponses."""
    return [
        append(
            hstream,
            stream,
            shard_id,
            [wire.raw_record(f"{tag}{b}-{i}".encode(), key=f"key{b % 3}") for i in range(2)],
        )
        for b in range(count)
    ]


def batch_ids(received) -> list[int]:
    return [r.recordIds[0].batchId for r in received]


@pytest.fixture
def shard_stream(hstream, make_stream):
    stream = make_stream()
    return stream.streamName, shards_of(hstream, stream.streamName)[0].shardId


@pytest.mark.conformance("api.readers.earliest")
def test_reader_from_earliest(hstream, shard_stream):
    stream, shard_id = shard_stream
    answers = write_batches(hstream, stream, shard_id, 6)
    got = read_all(hstream, stream, shard_id, want_batches=6)
    assert batch_ids(got) == [a.recordIds[0].batchId for a in answers], (
        f"EARLIEST reader gave batches {batch_ids(got)}, "
        f"want every batch in append order {[a.recordIds[0].batchId for a in answers]}"
    )
    assert [len(r.recordIds) for r in got] == [2] * 6


@pytest.mark.conformance("api.readers.latest")
def test_reader_from_latest(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    write_batches(hstream, stream, shard_id, 3, tag="old")
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream, shardId=shard_id, shardOffset=LATEST, readerId=reader_id, timeout=200
        )
    )
    try:
        new = write_batches(hstream, stream, shard_id, 2, tag="new")
        got = []
        for _ in range(20):
            got.extend(
                hstream.ReadShard(
                    api.ReadShardRequest(readerId=reader_id, maxRecords=10)
                ).receivedRecords
            )
            if len(got) >= 2:
                break
        assert batch_ids(got) == [a.recordIds[0].batchId for a in new], (
            f"LATEST reader gave {batch_ids(got)}, want only the later batches"
        )
    finally:
        delete_reader(hstream, reader_id)


@pytest.mark.conformance("api.readers.record-offset")
def test_reader_from_record_id(hstream, shard_stream):
    stream, shard_id = shard_stream
    answers = write_batches(hstream, stream, shard_id, 5)
    start = answers[2].recordIds[1]  # an index inside the batch: the whole batch is read
    got = read_all(
        hstream, stream, shard_id, offset=api.ShardOffset(recordOffset=start), want_batches=3
    )
    assert batch_ids(got) == [a.recordIds[0].batchId for a in answers[2:]], (
        f"reader from {start.batchId} gave {batch_ids(got)}, "
        f"want {[a.recordIds[0].batchId for a in answers[2:]]}"
    )


@pytest.mark.conformance("api.readers.timestamp")
def test_reader_from_timestamp(hstream, shard_stream):
    stream, shard_id = shard_stream
    early = write_batches(hstream, stream, shard_id, 2, tag="early")
    time.sleep(0.3)
    cut = int(time.time() * 1000)
    time.sleep(0.3)
    late = write_batches(hstream, stream, shard_id, 2, tag="late")
    got = read_all(
        hstream,
        stream,
        shard_id,
        want_batches=2,
        offset=api.ShardOffset(timestampOffset=api.TimestampOffset(timestampInMs=cut)),
    )
    assert batch_ids(got) == [a.recordIds[0].batchId for a in late], (
        f"reader from t={cut} gave {batch_ids(got)}, want "
        f"{[a.recordIds[0].batchId for a in late]}; early batches were "
        f"{[a.recordIds[0].batchId for a in early]}"
    )


@pytest.mark.conformance("api.readers.max-records")
def test_read_shard_max_records(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    expected = [a.recordIds[0].batchId for a in write_batches(hstream, stream, shard_id, 5)]
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream,
            shardId=shard_id,
            shardOffset=EARLIEST,
            readerId=reader_id,
            timeout=200,
        )
    )
    reads: list[list[int]] = []
    try:
        # "Up to" maxRecords: a server may return fewer, so read until all five came back
        # (each empty read waits the reader's 200 ms; ten reads bound a server that stalls).
        while sum(len(r) for r in reads) < len(expected) and len(reads) < 10:
            got = hstream.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=2))
            reads.append(batch_ids(got.receivedRecords))
    finally:
        delete_reader(hstream, reader_id)
    # maxRecords counts batches (§5); all five were written before the first read.
    assert all(len(r) <= 2 for r in reads), f"ReadShard(maxRecords=2) returned {reads}"
    flat = [batch for r in reads for batch in r]
    assert flat == expected, (
        f"successive ReadShard(maxRecords=2) calls gave {reads}; want {expected} in order, "
        "each batch once (the reader's position advances)"
    )


TIMEOUT_S = 1.0
TIMER_TICK_S = 0.02
SCHEDULING_SLACK_S = 3.0


@pytest.mark.conformance("api.readers.blocking-timeout")
def test_read_blocks_for_timeout(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream,
            shardId=shard_id,
            shardOffset=EARLIEST,
            readerId=reader_id,
            timeout=int(TIMEOUT_S * 1000),
        )
    )
    try:
        started = time.monotonic()
        got = hstream.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=10))
        waited = time.monotonic() - started
        assert not got.receivedRecords
        # The server must wait the whole timeout (the client's clock includes it, less at
        # most a timer tick); past it, only scheduling on a loaded machine may delay the answer.
        low, high = TIMEOUT_S - TIMER_TICK_S, TIMEOUT_S + SCHEDULING_SLACK_S
        assert low <= waited <= high, (
            f"empty read with timeout {TIMEOUT_S * 1000:.0f} ms returned after {waited:.2f} s; "
            f"want {low:.2f}..{high:.2f} s (timeout + {SCHEDULING_SLACK_S} s scheduling slack)"
        )
    finally:
        delete_reader(hstream, reader_id)


@pytest.mark.conformance("api.readers.lifecycle")
def test_reader_lifecycle(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream,
            shardId=shard_id,
            shardOffset=EARLIEST,
            readerId=reader_id,
            timeout=10,
        )
    )
    listed = hstream.ListShardReaders(api.ListShardReadersRequest()).readerId
    assert reader_id in listed, f"{reader_id} not in ListShardReaders {list(listed)}"
    delete_reader(hstream, reader_id)
    listed = hstream.ListShardReaders(api.ListShardReadersRequest()).readerId
    assert reader_id not in listed, "deleted reader still listed"
    expect_error(
        lambda: hstream.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=1)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


@pytest.mark.conformance("api.errors.reader-exists")
def test_reader_exists(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    reader_id = unique("rd")
    request = api.CreateShardReaderRequest(
        streamName=stream, shardId=shard_id, shardOffset=EARLIEST, readerId=reader_id, timeout=10
    )
    hstream.CreateShardReader(request)
    try:
        expect_error(lambda: hstream.CreateShardReader(request), grpc.StatusCode.ALREADY_EXISTS)
    finally:
        delete_reader(hstream, reader_id)


@pytest.mark.conformance("api.errors.reader-missing-offset")
def test_reader_without_offset(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    expect_error(
        lambda: hstream.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName=stream, shardId=shard_id, readerId=unique("rd"), timeout=10
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        208,
    )


@pytest.mark.conformance("api.errors.reader-unknown-shard")
def test_reader_unknown_shard(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    expect_error(
        lambda: hstream.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName=stream,
                shardId=shard_id ^ 0x7777777,
                shardOffset=EARLIEST,
                readerId=unique("rd"),
                timeout=10,
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.conformance("api.read.shard-stream-bounds")
def test_read_shard_stream_bounds(hstream, shard_stream, unique):
    stream, shard_id = shard_stream
    answers = write_batches(hstream, stream, shard_id, 6)
    ids = [a.recordIds[0] for a in answers]
    responses = hstream.ReadShardStream(
        api.ReadShardStreamRequest(
            readerId=unique("rs"),
            shardId=shard_id,
            **{"from": api.ShardOffset(recordOffset=ids[1])},
            until=api.ShardOffset(recordOffset=ids[4]),
            maxReadBatches=10,
        ),
        timeout=15,
    )
    got = [r for response in responses for r in response.receivedRecords]
    assert batch_ids(got) == [i.batchId for i in ids[1:5]], (
        f"from {ids[1].batchId} until {ids[4].batchId}: got {batch_ids(got)}, "
        f"want {[i.batchId for i in ids[1:5]]}"
    )
    limited = hstream.ReadShardStream(
        api.ReadShardStreamRequest(
            readerId=unique("rs"),
            shardId=shard_id,
            **{"from": EARLIEST},
            until=api.ShardOffset(recordOffset=ids[5]),
            maxReadBatches=2,
        ),
        timeout=15,
    )
    got = [r for response in limited for r in response.receivedRecords]
    assert batch_ids(got) == [i.batchId for i in ids[:2]], f"maxReadBatches=2 gave {batch_ids(got)}"


@pytest.mark.conformance("api.read.stream")
def test_read_stream_all_shards(hstream, make_stream, unique):
    stream = make_stream(shards=3)
    shards = shards_of(hstream, stream.streamName)
    expected = {
        s.shardId: [
            a.recordIds[0].batchId for a in write_batches(hstream, stream.streamName, s.shardId, 3)
        ]
        for s in shards
    }
    responses = hstream.ReadStream(
        api.ReadStreamRequest(
            readerId=unique("rs"),
            streamName=stream.streamName,
            **{"from": api.StreamOffset(specialOffset=api.SpecialOffset.EARLIEST)},
            until=api.StreamOffset(specialOffset=api.SpecialOffset.LATEST),
            maxReadBatches=100,
        ),
        timeout=15,
    )
    seen: dict[int, list[int]] = {}
    for response in responses:
        for received in response.receivedRecords:
            seen.setdefault(received.recordIds[0].shardId, []).append(received.recordIds[0].batchId)
    assert seen == expected, f"ReadStream per shard {seen}, want {expected}"


@pytest.mark.conformance("api.read.stream-by-key")
def test_read_stream_by_key(hstream, make_stream, unique):
    stream = make_stream(shards=2)
    shards = shards_of(hstream, stream.streamName)
    written: dict[str, list[bytes]] = {}
    for i in range(12):
        key = f"key{i % 3}"
        shard = wire.shard_for_key(shards, key)
        payload = f"{key}-{i}".encode()
        append(hstream, stream.streamName, shard.shardId, [wire.raw_record(payload, key=key)])
        written.setdefault(key, []).append(payload)

    def requests():
        yield api.ReadStreamByKeyRequest(
            readerId=unique("rk"),
            streamName=stream.streamName,
            key="key1",
            **{"from": EARLIEST},
            until=LATEST,
            readRecordCount=100,
        )

    got: list[bytes] = []
    for response in hstream.ReadStreamByKey(requests(), timeout=15):
        got.extend(r.payload for r in response.receivedRecords)
        if len(got) >= len(written["key1"]):
            break
    assert got == written["key1"], f"ReadStreamByKey(key1) gave {got}, want {written['key1']}"


def stream_offset_at(ms: int) -> api.StreamOffset:
    return api.StreamOffset(timestampOffset=api.TimestampOffset(timestampInMs=ms))


def time_cut() -> int:
    """A millisecond instant strictly between the appends before and after it.

    The pause on each side is much longer than the store's millisecond timestamp precision,
    so no batch can carry the cut's own millisecond.
    """
    time.sleep(0.3)
    cut = int(time.time() * 1000)
    time.sleep(0.3)
    return cut


@pytest.mark.conformance("api.read.stream-bounds")
def test_read_stream_bounds(hstream, make_stream, unique):
    stream = make_stream(shards=2)
    name = stream.streamName
    shards = [s.shardId for s in shards_of(hstream, name)]

    def write(count: int, tag: str) -> dict[int, list[int]]:
        return {
            s: [a.recordIds[0].batchId for a in write_batches(hstream, name, s, count, tag=tag)]
            for s in shards
        }

    early = write(2, "early")
    start = time_cut()
    middle = write(3, "mid")
    end = time_cut()
    late = write(2, "late")

    def read(request: api.ReadStreamRequest) -> dict[int, list[int]]:
        seen: dict[int, list[int]] = {}
        for response in hstream.ReadStream(request, timeout=15):
            for received in response.receivedRecords:
                first = received.recordIds[0]
                seen.setdefault(first.shardId, []).append(first.batchId)
        return seen

    windowed = read(
        api.ReadStreamRequest(
            readerId=unique("rs"),
            streamName=name,
            **{"from": stream_offset_at(start)},
            until=stream_offset_at(end),
            maxReadBatches=100,
        )
    )
    assert windowed == middle, (
        f"ReadStream from t={start} until t={end} gave {windowed}; want the middle batches "
        f"{middle} (early {early}, late {late})"
    )
    everything = {s: early[s] + middle[s] + late[s] for s in shards}
    limited = read(
        api.ReadStreamRequest(
            readerId=unique("rs"),
            streamName=name,
            **{"from": api.StreamOffset(specialOffset=api.SpecialOffset.EARLIEST)},
            until=api.StreamOffset(specialOffset=api.SpecialOffset.LATEST),
            maxReadBatches=3,
        )
    )
    assert sum(len(ids) for ids in limited.values()) == 3, f"maxReadBatches=3 gave {limited}"
    for shard_id, ids in limited.items():
        assert ids == everything[shard_id][: len(ids)], (
            f"maxReadBatches=3: shard {shard_id} gave {ids}, not a prefix of {everything[shard_id]}"
        )


class KeyReader:
    """A ReadStreamByKey call whose grants (readRecordCount) the test sends one by one."""

    def __init__(self, hstream, first: api.ReadStreamByKeyRequest) -> None:
        import queue
        import threading

        self._first = first
        self._grants: queue.Queue[int | None] = queue.Queue()
        self.payloads: queue.Queue[bytes] = queue.Queue()
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self._call = hstream.ReadStreamByKey(self._requests(), timeout=60)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _requests(self):
        yield self._first
        while (count := self._grants.get()) is not None:
            yield api.ReadStreamByKeyRequest(readRecordCount=count)

    def _drain(self) -> None:
        try:
            for response in self._call:
                for record in response.receivedRecords:
                    self.payloads.put(record.payload)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        finally:
            self.ended.set()

    def grant(self, count: int) -> None:
        self._grants.put(count)

    def take(self, count: int, timeout: float) -> list[bytes]:
        import queue

        deadline = time.monotonic() + timeout
        got: list[bytes] = []
        while len(got) < count and (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.payloads.get(timeout=min(left, 0.2)))
            except queue.Empty:
                if self.ended.is_set() and self.payloads.empty():
                    break
        return got

    def close(self) -> None:
        self._grants.put(None)
        self._call.cancel()
        self._drainer.join(timeout=5)


@pytest.mark.conformance("api.read.stream-by-key-bounds")
def test_read_stream_by_key_bounds(hstream, make_stream, unique):
    stream = make_stream()
    name = stream.streamName
    [shard] = shards_of(hstream, name)
    ids: list[api.RecordId] = []
    for i in range(8):
        appended = append(
            hstream,
            name,
            shard.shardId,
            [wire.raw_record(f"k-{i}".encode(), key="k"), wire.raw_record(b"noise", key="other")],
        )
        ids.append(appended.recordIds[0])
    payloads = [f"k-{i}".encode() for i in range(8)]

    bounded = KeyReader(
        hstream,
        api.ReadStreamByKeyRequest(
            readerId=unique("rk"),
            streamName=name,
            key="k",
            **{"from": api.ShardOffset(recordOffset=ids[2])},
            until=api.ShardOffset(recordOffset=ids[5]),
            readRecordCount=100,
        ),
    )
    try:
        got = bounded.take(8, timeout=15)
        assert bounded.error is None, f"ReadStreamByKey failed: {wire.WireError.of(bounded.error)}"
        assert got == payloads[2:6], (
            f"from batch {ids[2].batchId} until {ids[5].batchId}: got {got}, want {payloads[2:6]}"
        )
    finally:
        bounded.close()

    granted = KeyReader(
        hstream,
        api.ReadStreamByKeyRequest(
            readerId=unique("rk"),
            streamName=name,
            key="k",
            **{"from": EARLIEST},
            until=LATEST,
            readRecordCount=2,
        ),
    )
    try:
        first = granted.take(3, timeout=5)  # a third record would break the grant
        assert first == payloads[:2], f"a grant of 2 delivered {first}"
        granted.grant(3)
        second = granted.take(4, timeout=5)
        assert second == payloads[2:5], f"a further grant of 3 delivered {second}"
        granted.grant(100)
        rest = granted.take(100, timeout=15)
        assert rest == payloads[5:], f"the final grant delivered {rest}, want {payloads[5:]}"
        assert granted.error is None, f"ReadStreamByKey failed: {wire.WireError.of(granted.error)}"
    finally:
        granted.close()


@pytest.mark.conformance("api.read.single-shard-stream")
def test_read_single_shard_stream(hstream, shard_stream, make_stream, unique):
    stream, shard_id = shard_stream
    ids = [a.recordIds[0] for a in write_batches(hstream, stream, shard_id, 5)]

    def read(**bounds) -> list[int]:
        responses = hstream.ReadSingleShardStream(
            api.ReadSingleShardStreamRequest(readerId=unique("ss"), streamName=stream, **bounds),
            timeout=15,
        )
        return [r.recordIds[0].batchId for response in responses for r in response.receivedRecords]

    window = read(
        **{"from": api.ShardOffset(recordOffset=ids[1])},
        until=api.ShardOffset(recordOffset=ids[3]),
        maxReadBatches=10,
    )
    assert window == [i.batchId for i in ids[1:4]], (
        f"from {ids[1].batchId} until {ids[3].batchId}: got {window}, "
        f"want {[i.batchId for i in ids[1:4]]}"
    )
    limited = read(**{"from": EARLIEST}, until=LATEST, maxReadBatches=2)
    assert limited == [i.batchId for i in ids[:2]], f"maxReadBatches=2 gave {limited}"

    wide = make_stream(shards=2).streamName
    try:
        got = list(
            hstream.ReadSingleShardStream(
                api.ReadSingleShardStreamRequest(
                    readerId=unique("ss"), streamName=wide, **{"from": EARLIEST}, until=LATEST
                ),
                timeout=15,
            )
        )
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        assert error.status in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), f"ReadSingleShardStream of a 2-shard stream: want a refusal, got {error}"
    else:
        raise AssertionError(
            f"ReadSingleShardStream of a 2-shard stream succeeded with {len(got)} responses"
        )
