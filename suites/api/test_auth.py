"""Token authentication (protocol §6): the real server's `hserver.tokens`.

Clients send `authorization: Basic <credential>`; the official Erlang client puts base64 of
`user:password` there (HTTP Basic), so that is the spelling a good token must be accepted
in. Without tokens configured no check is possible: against a cluster of our own we start
one with a token; against `--cluster-url` we probe and skip, saying why, when it has none.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import expect_error

TOKEN = "hstream:hstream"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def basic(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Basic {credential}"),)


def erlang_spelling(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


def target_with_tokens(
    request: pytest.FixtureRequest, cluster_factory: Callable[..., object]
) -> tuple[str, str]:
    """(endpoint, token) of a cluster that has tokens configured, or skip with the reason."""
    given = request.config.getoption("cluster_url", default=None)
    if not given:
        cluster: Any = cluster_factory(tokens=(TOKEN,), nodes=1)
        return cluster.client_urls()[0].removeprefix("hstream://"), TOKEN
    endpoint = given.split(",")[0].removeprefix("hstream://")
    try:
        wire.stub(endpoint).DescribeCluster(Empty(), timeout=10)
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        if error.status != UNAUTHENTICATED:
            raise AssertionError(
                f"probing {endpoint} without a token: expected success or UNAUTHENTICATED, "
                f"got {error}"
            ) from None
    else:
        pytest.skip(
            f"the cluster under --cluster-url ({endpoint}) answers calls without a token, so it "
            "has no tokens configured; start it with tokens and pass --cluster-token to run "
            "api.auth.token"
        )
    token = request.config.getoption("cluster_token", default=None)
    if not token:
        pytest.skip(
            f"the cluster under --cluster-url ({endpoint}) refuses calls without a token; pass "
            "--cluster-token TOKEN (one it was started with) to check that a good token works"
        )
    return endpoint, token


@pytest.mark.conformance("api.auth.token")
def test_token_authentication(request, cluster_factory, unique):
    endpoint, token = target_with_tokens(request, cluster_factory)
    hstream = wire.stub(endpoint)

    # Refusals: no token, a wrong token, a token under another scheme. A unary call and a
    # streaming one, since servers install auth per call kind.
    for label, metadata in (
        ("no token", None),
        ("wrong token", basic(erlang_spelling("hstream:wrong"))),
        ("wrong scheme", (("authorization", f"Bearer {erlang_spelling(token)}"),)),
    ):
        error = expect_error(
            lambda m=metadata: hstream.DescribeCluster(Empty(), metadata=m, timeout=10),
            UNAUTHENTICATED,
        )
        assert error.message.strip(), f"{label}: the refusal says nothing about why: {error}"
        expect_error(
            lambda m=metadata: list(
                hstream.ReadStream(
                    api.ReadStreamRequest(readerId=unique("rs"), streamName=unique("s")),
                    metadata=m,
                    timeout=10,
                )
            ),
            UNAUTHENTICATED,
        )

    # A good token works for a real round trip: create, append, read back, delete.
    good = basic(erlang_spelling(token))
    try:
        described = hstream.DescribeCluster(Empty(), metadata=good, timeout=10)
    except grpc.RpcError as raw:
        raise AssertionError(
            f"a good token {token!r} (sent as 'Basic base64(token)', the Erlang client's "
            f"spelling) was refused: {wire.WireError.of(raw)}"
        ) from None
    assert described.serverNodes, f"DescribeCluster with a good token listed no nodes: {described}"
    name = unique("auth")
    hstream.CreateStream(
        api.Stream(streamName=name, replicationFactor=1, shardCount=1), metadata=good, timeout=10
    )
    try:
        [shard] = hstream.ListShards(
            api.ListShardsRequest(streamName=name), metadata=good, timeout=10
        ).shards
        appended = hstream.Append(
            api.AppendRequest(
                streamName=name,
                shardId=shard.shardId,
                records=wire.batch([wire.raw_record(b"with-token")]),
            ),
            metadata=good,
            timeout=10,
        )
        assert len(appended.recordIds) == 1, f"append with a good token: {appended}"
        expect_error(
            lambda: hstream.Append(
                api.AppendRequest(
                    streamName=name,
                    shardId=shard.shardId,
                    records=wire.batch([wire.raw_record(b"anonymous")]),
                ),
                timeout=10,
            ),
            UNAUTHENTICATED,
        )
        read = [
            record
            for response in hstream.ReadStream(
                api.ReadStreamRequest(
                    readerId=unique("rs"),
                    streamName=name,
                    **{"from": api.StreamOffset(specialOffset=api.SpecialOffset.EARLIEST)},
                    until=api.StreamOffset(specialOffset=api.SpecialOffset.LATEST),
                ),
                metadata=good,
                timeout=10,
            )
            for received in response.receivedRecords
            for record in wire.unbatch(received.record)
        ]
        payloads = [record.payload for record in read]
        assert payloads == [b"with-token"], (
            f"read back with a good token {payloads}; want only the authenticated append"
        )
    finally:
        hstream.DeleteStream(
            api.DeleteStreamRequest(streamName=name, force=True, ignoreNonExist=True),
            metadata=good,
            timeout=10,
        )
