"""Streams and shards (protocol §2, errors §6)."""

from __future__ import annotations

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import expect_error, shards_of
from .names import INVALID, MAY_DIFFER, classify

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.conformance("api.streams.create")
def test_create_echoes_stream_with_creation_time(hstream, unique):
    name = unique("create")
    created = hstream.CreateStream(
        api.Stream(streamName=name, replicationFactor=1, backlogDuration=60, shardCount=2)
    )
    try:
        assert created.streamName == name
        assert (created.replicationFactor, created.backlogDuration, created.shardCount) == (
            1,
            60,
            2,
        ), f"fields not echoed: {created}"
        assert created.HasField("creationTime") and created.creationTime.seconds > 0, (
            f"creationTime not set: {created}"
        )
    finally:
        hstream.DeleteStream(api.DeleteStreamRequest(streamName=name, force=True))


@pytest.mark.conformance("api.streams.get")
def test_get_returns_stream(hstream, make_stream):
    stream = make_stream(shards=3)
    got = hstream.GetStream(api.GetStreamRequest(name=stream.streamName)).stream
    assert (got.streamName, got.shardCount, got.replicationFactor) == (
        stream.streamName,
        3,
        1,
    ), f"GetStream returned {got}, created {stream}"


@pytest.mark.conformance("api.streams.list")
def test_list_and_prefix(hstream, make_stream, unique):
    prefix = unique("lst")
    ours = {make_stream(prefix=prefix).streamName for _ in range(3)}
    other = make_stream(prefix="other").streamName
    listed = {s.streamName for s in hstream.ListStreams(api.ListStreamsRequest()).streams}
    assert ours | {other} <= listed, f"missing from ListStreams: {(ours | {other}) - listed}"
    prefixed = {
        s.streamName
        for s in hstream.ListStreamsWithPrefix(
            api.ListStreamsWithPrefixRequest(prefix=prefix)
        ).streams
    }
    assert prefixed == ours, f"ListStreamsWithPrefix({prefix!r}) gave {prefixed}, want {ours}"


@pytest.mark.conformance("api.streams.delete")
def test_delete_then_delete_again(hstream, unique):
    name = unique("del")
    hstream.CreateStream(api.Stream(streamName=name, replicationFactor=1, shardCount=1))
    hstream.DeleteStream(api.DeleteStreamRequest(streamName=name))
    listed = {s.streamName for s in hstream.ListStreams(api.ListStreamsRequest()).streams}
    assert name not in listed, "deleted stream still listed"
    expect_error(
        lambda: hstream.DeleteStream(api.DeleteStreamRequest(streamName=name)),
        grpc.StatusCode.NOT_FOUND,
        200,
    )


@pytest.mark.conformance("api.streams.delete-ignore-non-exist")
def test_delete_ignore_non_exist(hstream, unique):
    hstream.DeleteStream(api.DeleteStreamRequest(streamName=unique("nope"), ignoreNonExist=True))


@pytest.mark.conformance("api.streams.delete-with-subscription")
def test_delete_with_subscription_needs_force(hstream, make_stream, subscribe):
    stream = make_stream()
    subscribe(stream.streamName)
    expect_error(
        lambda: hstream.DeleteStream(api.DeleteStreamRequest(streamName=stream.streamName)),
        grpc.StatusCode.FAILED_PRECONDITION,
        202,
    )
    hstream.DeleteStream(api.DeleteStreamRequest(streamName=stream.streamName, force=True))
    expect_error(
        lambda: hstream.GetStream(api.GetStreamRequest(name=stream.streamName)),
        grpc.StatusCode.NOT_FOUND,
        200,
    )


@pytest.mark.conformance("api.errors.stream-exists")
def test_create_existing_stream(hstream, make_stream):
    stream = make_stream()
    expect_error(
        lambda: hstream.CreateStream(
            api.Stream(streamName=stream.streamName, replicationFactor=1, shardCount=1)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        201,
    )


@pytest.mark.conformance("api.errors.stream-not-found")
def test_get_unknown_stream(hstream, unique):
    expect_error(
        lambda: hstream.GetStream(api.GetStreamRequest(name=unique("ghost"))),
        grpc.StatusCode.NOT_FOUND,
        200,
    )


# Invalid under every reading of "letter" (names.py): ASCII and Unicode alike refuse them.
INVALID_NAMES = {
    "empty": "",
    "digit-first": "1starts-with-digit",
    "underscore-first": "_underscore-first",
    "space": "has space",
    "dot": "has.dot",
    "too-long": "x" * 256,
    "symbol": "émoji😀",  # é is a letter, the emoji is not (So)
    "non-ascii-digit-first": "٣abc",  # ARABIC-INDIC DIGIT THREE: a digit, not a letter
    "combining-mark": "e\u0301",  # a mark (Mn) is neither a letter nor a digit
    "non-ascii-punctuation": "a·b",  # MIDDLE DOT (Po)
    "too-long-non-ascii": "é" * 256,
}


@pytest.mark.conformance("api.errors.invalid-stream-name")
@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
def test_invalid_stream_names(hstream, name):
    assert classify(name) == INVALID, f"{name!r} is not invalid under every reading"
    expect_error(
        lambda: hstream.CreateStream(
            api.Stream(streamName=name, replicationFactor=1, shardCount=1)
        ),
        INVALID_ARGUMENT,
        204,
    )


# Valid only where "letter" means a Unicode letter (real HStreamDB's reading).
UNICODE_NAMES = ["écho", "流_1", "Ωmega-2", "xٳ٣", "Ǆx"]


@pytest.mark.conformance("api.streams.unicode-names")
def test_unicode_letter_names(hstream, unique):
    """§2 says "a letter" without an alphabet: a name of non-ASCII letters and digits is
    accepted (and is then the stream's name, code point for code point) or refused 3/204,
    never another error; and a server reads "letter" one way, so it takes all or none."""
    accepted, refused = [], []
    for base in UNICODE_NAMES:
        assert classify(base) == MAY_DIFFER, f"{base!r} is not a Unicode-only name"
        name = f"{base}{unique('')}"  # unique: "_" + hex, valid under both readings
        try:
            created = hstream.CreateStream(
                api.Stream(streamName=name, replicationFactor=1, shardCount=1)
            )
        except grpc.RpcError as raw:
            error = wire.WireError.of(raw)
            assert (error.status, error.code) == (INVALID_ARGUMENT, 204), (
                f"{name!r}: want acceptance or INVALID_ARGUMENT 204, got {error}"
            )
            refused.append(name)
            continue
        try:
            got = hstream.GetStream(api.GetStreamRequest(name=name)).stream
            assert created.streamName == got.streamName == name, (
                f"{name!r} created as {created.streamName!r}, read back as {got.streamName!r}"
            )
        finally:
            hstream.DeleteStream(
                api.DeleteStreamRequest(streamName=name, force=True, ignoreNonExist=True)
            )
        accepted.append(name)
    assert not (accepted and refused), (
        f"accepted {accepted} but refused {refused}: one reading of 'letter' takes all or none"
    )


@pytest.mark.conformance("api.errors.invalid-shard-count")
def test_zero_shards(hstream, unique):
    expect_error(
        lambda: hstream.CreateStream(
            api.Stream(streamName=unique("z"), replicationFactor=1, shardCount=0)
        ),
        INVALID_ARGUMENT,
        205,
    )


@pytest.mark.conformance("api.errors.invalid-replication-factor")
def test_zero_replication_factor(hstream, unique):
    expect_error(
        lambda: hstream.CreateStream(
            api.Stream(streamName=unique("z"), replicationFactor=0, shardCount=1)
        ),
        INVALID_ARGUMENT,
        203,
    )


@pytest.mark.conformance("api.shards.key-ranges")
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_key_ranges_split_evenly(hstream, make_stream, count):
    stream = make_stream(shards=count)
    shards = shards_of(hstream, stream.streamName)
    seen = [(int(s.startHashRangeKey), int(s.endHashRangeKey)) for s in shards]
    assert seen == wire.expected_ranges(count), (
        f"{count} shards: ranges {seen} differ from the even split {wire.expected_ranges(count)}"
    )
    for shard in shards:
        for bound in (shard.startHashRangeKey, shard.endHashRangeKey):
            assert bound.isdigit(), f"bound {bound!r} is not a decimal string"


@pytest.mark.conformance("api.shards.fields")
def test_shard_fields(hstream, make_stream):
    stream = make_stream(shards=4)
    shards = shards_of(hstream, stream.streamName)
    assert len({s.shardId for s in shards}) == 4, f"shard ids not unique: {shards}"
    for shard in shards:
        assert shard.streamName == stream.streamName
        assert shard.isActive, f"shard {shard.shardId} not active"
        assert shard.epoch == 4, f"epoch {shard.epoch}, want the shard count at creation (4)"


@pytest.mark.conformance("api.shards.same-on-every-node")
def test_shards_same_from_every_node(every_node, make_stream):
    stream = make_stream(shards=5)
    answers = [shards_of(node, stream.streamName) for node in every_node]
    assert all(answer == answers[0] for answer in answers), f"nodes disagree: {answers}"


@pytest.mark.conformance("api.shards.unknown-stream")
def test_list_shards_unknown_stream(hstream, unique):
    # The real server answers UNAVAILABLE here (§2), a NotFound family code would be the
    # natural one: the check demands a failure and records which status was used.
    try:
        hstream.ListShards(api.ListShardsRequest(streamName=unique("ghost")))
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        assert error.status in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), str(error)
    else:
        raise AssertionError("ListShards of an unknown stream succeeded")
