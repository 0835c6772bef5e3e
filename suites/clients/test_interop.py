"""Written by one client, read by another: key, attributes, payload and compression survive.

A writer that cannot produce a combination (its API has no attributes, or no zstd) skips
with its own refusal as the reason; a reader that cannot read what another official client
legitimately wrote is a finding.
"""

from __future__ import annotations

import base64
import itertools
import uuid

import pytest

from harness.clients.driver import CLIENTS, DriverUnavailable, driver_command, json_payload
from harness.clients.driver import raw_payload as make_raw

from .findings import PYTHON_NO_ZSTD


def combinations():
    for writer, reader in itertools.product(CLIENTS, CLIENTS):
        for compression in ("none", "gzip", "zstd"):
            marks = []
            if reader == "python" and compression == "zstd" and writer != "python":
                marks.append(
                    pytest.mark.xfail(strict=True, raises=AssertionError, reason=PYTHON_NO_ZSTD)
                )
            yield pytest.param(
                writer, reader, compression, marks=marks, id=f"{writer}-to-{reader}-{compression}"
            )


def started(drivers, endpoints, client: str):
    try:
        driver_command(client)
    except DriverUnavailable as reason:
        pytest.skip(str(reason))
    driver = drivers(client)
    reply = driver.connect(endpoints)
    assert reply.ok, f"{client} could not connect: {reply.error}"
    return driver


@pytest.mark.parametrize(("writer_name", "reader_name", "compression"), list(combinations()))
def test_written_by_one_read_by_other(
    drivers, endpoints, baseline, writer_name, reader_name, compression
):
    writer = started(drivers, endpoints, writer_name)
    reader = started(drivers, endpoints, reader_name)
    stream = f"interop_{uuid.uuid4().hex[:10]}"
    assert baseline.simple("create_stream", stream=stream, shards=1).ok
    tag = uuid.uuid4().hex[:6]
    records = [make_raw(f"{tag}-raw-{i}", size=40 + i) for i in range(3)]
    records += [
        json_payload(f"{tag}-json-{i}", n=i, name=f"row {i}", ok=bool(i % 2)) for i in range(3)
    ]
    key = "interop-ключ"
    # A writer that cannot produce this combination skips (the drivers' UNSUPPORTED hook).
    written = writer.append(stream, records, key=key, compression=compression)
    assert written.ok, f"{writer_name} append failed: {written.error}"
    shard_id = written.value["record_ids"][0][0]
    read = reader.read_shard(stream, shard_id)
    assert read.ok, f"{reader_name} could not read what {writer_name} wrote: {read.error}"
    got = read.value["records"]
    assert [r["payload_id"] for r in got] == [r["payload_id"] for r in records], (
        f"payload ids {[r['payload_id'] for r in got]}"
    )
    assert {r["key"] for r in got} == {key}, f"keys {[r['key'] for r in got]}"
    for sent, seen in zip(records, got, strict=True):
        if sent.get("json") is not None:
            assert seen["json"] == sent["json"], f"JSON payload {seen['json']} != {sent['json']}"
        else:
            assert base64.b64decode(seen["data"]) == base64.b64decode(sent["data"]), (
                f"raw payload of {sent['payload_id']} altered"
            )
    assert [tuple(r["record_id"]) for r in got] == [tuple(i) for i in written.value["record_ids"]]


@pytest.mark.parametrize("reader_name", CLIENTS)
def test_attributes_survive(drivers, endpoints, baseline, reader_name):
    reader = started(drivers, endpoints, reader_name)
    stream = f"attrs_{uuid.uuid4().hex[:10]}"
    assert baseline.simple("create_stream", stream=stream, shards=1).ok
    record = {**make_raw(f"attr-{uuid.uuid4().hex[:6]}"), "attributes": {"a": "1", "ü": "ß"}}
    written = baseline.append(stream, [record], key="k")
    assert written.ok, written.error
    read = reader.read_shard(stream, written.value["record_ids"][0][0])
    assert read.ok, read.error
    assert [r["attributes"] for r in read.value["records"]] == [{"a": "1", "ü": "ß"}]


def test_invalid_input_surfaces(client, client_name):
    """Errors reach the caller with the server's status: a bad name is a definite failure."""
    bad = client.simple("create_stream", stream="1-starts-with-a-digit", shards=1)
    assert bad.type == "fail" and bad.status == "INVALID_ARGUMENT", (
        f"{client_name}: invalid stream name answered {bad.type} {bad.status}: {bad.error}"
    )
    name = f"dup_{uuid.uuid4().hex[:10]}"
    assert client.simple("create_stream", stream=name, shards=1).ok
    again = client.simple("create_stream", stream=name, shards=1)
    assert again.type == "fail" and again.status == "ALREADY_EXISTS", (
        f"{client_name}: duplicate stream answered {again.type} {again.status}: {again.error}"
    )
    missing = client.append(f"ghost_{uuid.uuid4().hex[:8]}", [make_raw("ghost-1")])
    assert not missing.ok and missing.error, (
        f"{client_name}: append to a missing stream answered {missing.type}"
    )
