"""BatchedRecord payloads: (de)compression and (de)serialisation of HStreamRecords.

The server stores a BatchedRecord as one store entry without decompressing it (protocol
§1); only paths that must look inside a batch (redelivering part of one, reading by key)
decode it.
"""

from __future__ import annotations

import gzip

import zstandard
from HStream.Server import HStreamApi_pb2 as api

NONE = api.CompressionType.Value("None")
GZIP = api.CompressionType.Value("Gzip")
ZSTD = api.CompressionType.Value("Zstd")


class BadBatch(ValueError):
    pass


def decompress(compression: int, payload: bytes) -> bytes:
    try:
        if compression == NONE:
            return payload
        if compression == GZIP:
            return gzip.decompress(payload)
        if compression == ZSTD:
            # zstd frames written without a content size need a streaming reader.
            return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    except (OSError, EOFError, zstandard.ZstdError) as error:
        name = api.CompressionType.Name(compression)
        raise BadBatch(f"cannot decompress {name}: {error}") from error
    raise BadBatch(f"unknown compression type {compression}")


def compress(compression: int, data: bytes) -> bytes:
    if compression == NONE:
        return data
    if compression == GZIP:
        return gzip.compress(data)
    if compression == ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    raise BadBatch(f"unknown compression type {compression}")


def decode(batch: api.BatchedRecord) -> list[api.HStreamRecord]:
    """The HStreamRecords inside a BatchedRecord."""
    records = api.BatchHStreamRecords()
    try:
        records.ParseFromString(decompress(batch.compressionType, batch.payload))
    except Exception as error:  # protobuf raises DecodeError; keep the cause
        if isinstance(error, BadBatch):
            raise
        raise BadBatch(f"payload is not a BatchHStreamRecords: {error}") from error
    return list(records.records)


def encode(records: list[api.HStreamRecord], compression: int = NONE) -> api.BatchedRecord:
    payload = api.BatchHStreamRecords(records=records).SerializeToString()
    return api.BatchedRecord(
        compressionType=compression,
        batchSize=len(records),
        payload=compress(compression, payload),
    )
