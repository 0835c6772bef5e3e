"""Property-based checks (Hypothesis) of names, ranges, key routing and payloads (§1, §2)."""

from __future__ import annotations

import string

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api
from hypothesis import given
from hypothesis import strategies as st

from harness import wire

from .conftest import append, read_all, shards_of
from .names import INVALID, VALID, classify

valid_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,40}\Z")
any_names = st.one_of(
    valid_names,
    st.text(min_size=0, max_size=30),
    st.text(alphabet=string.ascii_letters + "_-. 0123456789", min_size=0, max_size=30),
    # Letters and digits outside ASCII, where the readings of "letter" part (names.py).
    st.text(
        alphabet=st.characters(categories=("Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No")),
        min_size=1,
        max_size=30,
    ),
)


@pytest.mark.conformance("api.properties.stream-names")
@given(name=any_names)
def test_stream_name_rule(hstream, name):
    verdict = classify(name)
    # Suffix names that may be accepted so examples never collide with each other or
    # earlier runs; the suffix keeps the verdict (a '-' and digits are valid everywhere).
    if verdict != INVALID:
        name = f"{name[:200]}-{abs(hash(name)) % 10**8}"
    try:
        hstream.CreateStream(api.Stream(streamName=name, replicationFactor=1, shardCount=1))
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        if verdict != INVALID and error.status == grpc.StatusCode.ALREADY_EXISTS:
            return
        assert verdict != VALID, f"valid name {name!r} rejected: {error}"
        assert (error.status, error.code) == (grpc.StatusCode.INVALID_ARGUMENT, 204), (
            f"name {name!r} ({verdict}): want INVALID_ARGUMENT 204, got {error}"
        )
    else:
        hstream.DeleteStream(api.DeleteStreamRequest(streamName=name, force=True))
        assert verdict != INVALID, f"invalid name {name!r} was accepted"


@pytest.mark.conformance("api.properties.shard-ranges")
@given(count=st.integers(min_value=1, max_value=64))
def test_ranges_for_any_shard_count(hstream, make_stream, count):
    stream = make_stream(shards=count)
    shards = shards_of(hstream, stream.streamName)
    seen = [(int(s.startHashRangeKey), int(s.endHashRangeKey)) for s in shards]
    assert seen == wire.expected_ranges(count), f"{count} shards: {seen}"


@pytest.mark.conformance("api.properties.key-routing")
@given(keys=st.lists(st.text(max_size=300), min_size=1, max_size=20))
def test_key_routing_same_everywhere(every_node, make_stream, keys):
    stream = make_stream(shards=5)
    views = [shards_of(node, stream.streamName) for node in every_node]
    assert all(view == views[0] for view in views), "nodes list different shards"
    for key in keys:
        wire.shard_for_key(views[0], key)  # exactly one shard holds MD5(key)
        owners = {
            wire.endpoint_of(node.LookupKey(api.LookupKeyRequest(partitionKey=key)))
            for node in every_node
        }
        assert len(owners) == 1, f"LookupKey({key!r}) differs across nodes: {owners}"


records_strategy = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=2048),
        st.text(max_size=40),
        st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.conformance("api.properties.payload-roundtrip")
@given(batch=records_strategy, compression=st.sampled_from(["none", "gzip", "zstd"]))
def test_payload_roundtrip(hstream, make_stream, batch, compression):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    sent = [wire.raw_record(payload, key=key, attributes=attrs) for payload, key, attrs in batch]
    answer = append(hstream, stream.streamName, shard.shardId, sent, compression)
    assert len(answer.recordIds) == len(sent)
    [received] = read_all(hstream, stream.streamName, shard.shardId, want_batches=1)
    got = wire.unbatch(received.record)
    assert [(r.payload, r.header.key, dict(r.header.attributes)) for r in got] == batch, (
        f"{compression} batch of {len(batch)} records did not round-trip"
    )
