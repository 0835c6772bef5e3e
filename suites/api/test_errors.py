"""The remaining error cases of protocol §6, each judged by gRPC status *and* JSON code.

The checks of the common cases (stream exists / not found, bad names and counts, empty or
oversize batches, subscription errors) sit next to the feature they guard; these are the
identifier rules, the reader offset conflict, the JSON shape itself and WrongServer.
"""

from __future__ import annotations

import json

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import expect_error, shards_of

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EARLIEST = api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST)
BAD_IDS = ["", "1digit-first", "has space", "x" * 256]
BAD_ID_NAMES = ["empty", "digit-first", "space", "too-long"]


@pytest.mark.conformance("api.errors.json-shape")
def test_error_message_is_json(hstream, unique):
    ghost = unique("ghost")
    error = expect_error(
        lambda: hstream.GetStream(api.GetStreamRequest(name=ghost)), grpc.StatusCode.NOT_FOUND
    )
    try:
        body = json.loads(error.message)
    except ValueError:
        raise AssertionError(f"status message is not JSON text: {error.message!r}") from None
    assert isinstance(body, dict) and set(body) >= {"error", "message"}, (
        f"want {{'error': int, 'message': str, 'extra': ...}}, got {body!r}"
    )
    assert body["error"] == 200, f"unknown stream: error code {body['error']}, want 200"
    assert isinstance(body["message"], str) and body["message"], f"empty message: {body!r}"


@pytest.mark.conformance("api.errors.invalid-subscription-id")
@pytest.mark.parametrize("sub_id", BAD_IDS, ids=BAD_ID_NAMES)
def test_invalid_subscription_id(hstream, make_stream, sub_id):
    stream = make_stream()
    expect_error(
        lambda: hstream.CreateSubscription(
            api.Subscription(
                subscriptionId=sub_id,
                streamName=stream.streamName,
                ackTimeoutSeconds=10,
                maxUnackedRecords=100,
            )
        ),
        INVALID_ARGUMENT,
        304,
    )


@pytest.mark.conformance("api.errors.invalid-reader-id")
@pytest.mark.parametrize("reader_id", BAD_IDS, ids=BAD_ID_NAMES)
def test_invalid_reader_id(hstream, make_stream, reader_id):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    expect_error(
        lambda: hstream.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName=stream.streamName,
                shardId=shard.shardId,
                shardOffset=EARLIEST,
                readerId=reader_id,
                timeout=10,
            )
        ),
        INVALID_ARGUMENT,
        900,
    )


@pytest.mark.conformance("api.errors.reader-offset-conflict")
def test_reader_offset_of_another_shard(hstream, make_stream, unique):
    stream = make_stream(shards=2)
    first, second = shards_of(hstream, stream.streamName)
    appended = hstream.Append(
        api.AppendRequest(
            streamName=stream.streamName,
            shardId=second.shardId,
            records=wire.batch([wire.raw_record(b"elsewhere")]),
        )
    )
    foreign = appended.recordIds[0]  # a record of the second shard
    expect_error(
        lambda: hstream.CreateShardReader(
            api.CreateShardReaderRequest(
                streamName=stream.streamName,
                shardId=first.shardId,
                shardOffset=api.ShardOffset(recordOffset=foreign),
                readerId=unique("rd"),
                timeout=10,
            )
        ),
        INVALID_ARGUMENT,
        901,
    )


@pytest.mark.conformance("api.errors.reader-unknown")
def test_read_unknown_reader(hstream, unique):
    expect_error(
        lambda: hstream.ReadShard(api.ReadShardRequest(readerId=unique("ghost"), maxRecords=1)),
        FAILED_PRECONDITION,
    )


def non_owner(endpoints: list[str], owner: api.ServerNode) -> str:
    others = [e for e in endpoints if e != wire.endpoint_of(owner)]
    if not others:
        pytest.skip(f"every node is the owner ({endpoints}): WrongServer needs 2+ nodes")
    return others[0]


@pytest.mark.conformance("api.errors.wrong-server")
def test_ownership_checked_calls_on_a_non_owner(hstream, endpoints, make_stream, unique, subscribe):
    stream = make_stream()
    sub_id = subscribe(stream.streamName)
    owner = hstream.LookupSubscription(
        api.LookupSubscriptionRequest(subscriptionId=sub_id)
    ).serverNode
    wrong = wire.stub(non_owner(endpoints, owner))
    for call, request in (
        ("GetSubscription", api.GetSubscriptionRequest(id=sub_id)),
        ("ListConsumers", api.ListConsumersRequest(subscriptionId=sub_id)),
        ("DeleteSubscription", api.DeleteSubscriptionRequest(subscriptionId=sub_id, force=True)),
    ):
        error = expect_error(
            lambda c=call, r=request: getattr(wrong, c)(r), FAILED_PRECONDITION, 800
        )
        assert error.message, f"{call} on a non-owner: WrongServer says nothing: {error}"
    # The refused delete changed nothing: the owner still has the subscription.
    on_owner = wire.stub(wire.endpoint_of(owner))
    kept = on_owner.GetSubscription(api.GetSubscriptionRequest(id=sub_id)).subscription
    assert kept.subscriptionId == sub_id, f"after a refused delete the owner returned {kept}"
    on_owner.DeleteSubscription(api.DeleteSubscriptionRequest(subscriptionId=sub_id, force=True))

    shard = shards_of(hstream, stream.streamName)[0]
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream.streamName,
            shardId=shard.shardId,
            shardOffset=EARLIEST,
            readerId=reader_id,
            timeout=10,
        )
    )
    reader_owner = hstream.LookupShardReader(
        api.LookupShardReaderRequest(readerId=reader_id)
    ).serverNode
    expect_error(
        lambda: wire.stub(non_owner(endpoints, reader_owner)).DeleteShardReader(
            api.DeleteShardReaderRequest(readerId=reader_id)
        ),
        FAILED_PRECONDITION,
        800,
    )
    listed = hstream.ListShardReaders(api.ListShardReadersRequest()).readerId
    assert reader_id in listed, f"a refused DeleteShardReader removed {reader_id} anyway"
    wire.stub(wire.endpoint_of(reader_owner)).DeleteShardReader(
        api.DeleteShardReaderRequest(readerId=reader_id)
    )
