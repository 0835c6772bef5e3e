"""HStreamDB wire facts the suites and the raw driver share.

Built from the official stubs (`hstreamdb-api`) only, so a check written with these helpers
sees exactly what a server put on the wire — no client library in between to hide a fault.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import zstandard
from google.protobuf import struct_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials

KEY_SPACE_MAX = 2**128 - 1
COMPRESSIONS = {"none": 0, "gzip": 1, "zstd": 2}


def key_hash(key: str) -> int:
    """A partition key's position on the ring: MD5 of its UTF-8 bytes, big-endian (§2)."""
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest(), "big")


def expected_ranges(shard_count: int) -> list[tuple[int, int]]:
    """The even split of [0, 2^128-1] the server must produce for `shard_count` shards."""
    step = KEY_SPACE_MAX // shard_count
    ranges = [(i * step, i * step + step - 1) for i in range(shard_count)]
    ranges[-1] = (ranges[-1][0], KEY_SPACE_MAX)
    return ranges


def shard_for_key(shards: Sequence[api.Shard], key: str) -> api.Shard:
    position = key_hash(key)
    owners = [
        s for s in shards if int(s.startHashRangeKey) <= position <= int(s.endHashRangeKey)
    ]
    if len(owners) != 1:
        raise AssertionError(f"key {key!r} (hash {position}) falls in {len(owners)} shards")
    return owners[0]


def raw_record(payload: bytes, key: str = "", attributes: Mapping[str, str] | None = None):
    header = api.HStreamRecordHeader(
        flag=api.HStreamRecordHeader.Flag.RAW, key=key, attributes=dict(attributes or {})
    )
    return api.HStreamRecord(header=header, payload=payload)


def json_record(value: Mapping[str, Any], key: str = "", attributes=None) -> api.HStreamRecord:
    # A JSON record's payload is a binary serialized google.protobuf.Struct, not text (§1).
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    header = api.HStreamRecordHeader(
        flag=api.HStreamRecordHeader.Flag.JSON, key=key, attributes=dict(attributes or {})
    )
    return api.HStreamRecord(header=header, payload=struct.SerializeToString())


def compress(compression: str, data: bytes) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression {compression!r}; known: {', '.join(COMPRESSIONS)}")


def decompress(compression_type: int, data: bytes) -> bytes:
    if compression_type == 0:
        return data
    if compression_type == 1:
        return gzip.decompress(data)
    if compression_type == 2:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise ValueError(f"unknown compression type {compression_type}")


def batch(records: Sequence[api.HStreamRecord], compression: str = "none") -> api.BatchedRecord:
    payload = api.BatchHStreamRecords(records=list(records)).SerializeToString()
    return api.BatchedRecord(
        compressionType=COMPRESSIONS[compression],
        batchSize=len(records),
        payload=compress(compression, payload),
    )


def unbatch(batched: api.BatchedRecord) -> list[api.HStreamRecord]:
    records = api.BatchHStreamRecords()
    records.ParseFromString(decompress(batched.compressionType, batched.payload))
    return list(records.records)


@dataclass(frozen=True)
class WireError:
    """A failed call as the client sees it: gRPC status plus HStreamDB's JSON error code."""

    status: grpc.StatusCode
    code: int | None
    message: str

    @classmethod
    def of(cls, error: grpc.RpcError) -> WireError:
        details = error.details() or ""  # type: ignore[attr-defined]
        code: int | None = None
        try:
            parsed = json.loads(details)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), int):
                code = parsed["error"]
        except ValueError:
            pass
        return cls(error.code(), code, details)  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"{self.status.name} (error code {self.code}): {self.message}"


def channel(endpoint: str, credential: str | None = credentials.RUN) -> grpc.Channel:
    """A channel to `endpoint` sending the run's credential (or `credential`; None: none)."""
    return credentials.channel(endpoint, [("grpc.enable_retries", 0)], credential)


def stub(endpoint: str, credential: str | None = credentials.RUN) -> api_grpc.HStreamApiStub:
    return api_grpc.HStreamApiStub(channel(endpoint, credential))


def endpoint_of(node: api.ServerNode) -> str:
    return f"{node.host}:{node.port}"


class FetchSession:
    """A raw StreamingFetch consumer.

    The first request names the subscription and consumer; later ones carry acks. Responses
    are drained on a thread so a test can wait for "n records or a deadline" without blocking
    the acks it still has to send.
    """

    def __init__(self, hstream: api_grpc.HStreamApiStub, subscription_id: str, consumer: str):
        import queue
        import threading

        self.subscription_id = subscription_id
        self.consumer = consumer
        self._requests: queue.Queue[api.StreamingFetchRequest | None] = queue.Queue()
        self._requests.put(
            api.StreamingFetchRequest(subscriptionId=subscription_id, consumerName=consumer)
        )
        self.received: queue.Queue[api.ReceivedRecord] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._call = hstream.StreamingFetch(self._outgoing())
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _outgoing(self):  # type: ignore[no-untyped-def]
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _drain(self) -> None:
        try:
            for response in self._call:
                self.received.put(response.receivedRecords)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                self.error = error
        finally:
            self.ended.set()

    def ack(self, record_ids: Sequence[api.RecordId]) -> None:
        self._requests.put(
            api.StreamingFetchRequest(
                subscriptionId=self.subscription_id,
                consumerName=self.consumer,
                ackIds=list(record_ids),
            )
        )

    def take(self, count: int, timeout: float) -> list[tuple[api.RecordId, api.HStreamRecord]]:
        """Records (with their ids) until `count` arrived or `timeout` seconds passed."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        got: list[tuple[api.RecordId, api.HStreamRecord]] = []
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                received = self.received.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.ended.is_set() and self.received.empty():
                    break
                continue
            got.extend(zip(received.recordIds, unbatch(received.record), strict=True))
        return got

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)
