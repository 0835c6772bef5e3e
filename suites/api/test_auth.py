"""Token authentication (protocol §6): the real server's `hserver.tokens`.

Clients send `authorization: Basic <token>` with a token the server is configured with, and
the check sends exactly that: "Basic " and the token as the server holds it. Real HStreamDB
holds base64 of `user:password` (what the Erlang client sends) and compares the header byte
for byte; the reference server holds the token it was given. A server may accept more
spellings (the reference server's protocol profile also takes base64 of a listed token),
but the protocol promises only this one, so only this one is checked.

A refused call is UNAUTHENTICATED. Real HStreamDB without TLS cancels it instead (CANCELLED):
a departure, reported as the target's finding `auth_cancels` (harness.findings), not a
failure and not a pass.

Without tokens configured no check is possible: against a cluster of our own we start one
with a token; against `--cluster-url` we probe and skip, saying why, when it has none. There
`--cluster-token` is what follows "Basic " as given (for real HStreamDB: the base64 value of
its `hserver.tokens`).
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
from harness.findings import Findings
from harness.targets import settings_for
from harness.targets.hstream import config_token
from harness.targets.settings import TargetSettings

TOKEN = "hstream:hstream"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
CANCELLED = grpc.StatusCode.CANCELLED
REFUSAL = (UNAUTHENTICATED, CANCELLED)  # the protocol's, and auth_cancels'


def basic(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Basic {credential}"),)


def held_token(settings: TargetSettings, token: str) -> str:
    """The token as a server started with `tokens=(token,)` holds it, i.e. what a client puts
    after "Basic ": the hstream target writes base64 of `user:password` into the config
    (harness.targets.hstream.config_token); the reference server lists the token as given."""
    return config_token(token) if settings.target == "hstream" else token


def target_with_tokens(
    request: pytest.FixtureRequest, cluster_factory: Callable[..., object]
) -> tuple[str, str, TargetSettings]:
    """(endpoint, credential, settings) of a cluster that has tokens configured, or skip
    with the reason; `credential` is what a client sends after "Basic "."""
    given = request.config.getoption("cluster_url", default=None)
    if not given:
        cluster: Any = cluster_factory(tokens=(TOKEN,), nodes=1)
        settings = cluster.settings
        return (
            cluster.client_urls()[0].removeprefix("hstream://"),
            held_token(settings, TOKEN),
            settings,
        )
    settings = settings_for(request.getfixturevalue("cluster_spec"))
    endpoint = given.split(",")[0].removeprefix("hstream://")
    try:
        wire.stub(endpoint).DescribeCluster(Empty(), timeout=10)
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        if error.status not in REFUSAL:
            raise AssertionError(
                f"probing {endpoint} without a token: expected success or a refusal "
                f"(UNAUTHENTICATED, or CANCELLED from a server that cancels refused calls), "
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
            "--cluster-token TOKEN (what follows 'Basic ': for real HStreamDB the base64 value "
            "in its hserver.tokens) to check that a good token works"
        )
    return endpoint, token, settings


def refused(findings: Findings, label: str, call: Callable[[], object]) -> None:
    """`call` must be refused: UNAUTHENTICATED with a reason (§6), or CANCELLED where the
    target documents `auth_cancels` (recorded as its finding)."""
    try:
        result = call()
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
    else:
        raise AssertionError(f"{label}: accepted ({result!r}); want UNAUTHENTICATED")
    findings.judge(
        "auth_cancels",
        f"{label}: {error}",
        conforms=error.status == UNAUTHENTICATED,
        departs=error.status == CANCELLED,
        protocol="UNAUTHENTICATED",
    )
    if error.status == UNAUTHENTICATED:
        assert error.message.strip(), f"{label}: the refusal says nothing about why: {error}"


@pytest.mark.conformance("api.auth.token")
def test_token_authentication(request, cluster_factory, unique):
    endpoint, credential, settings = target_with_tokens(request, cluster_factory)
    # Every metadata below is the call's own: nothing of the run's credential is added.
    hstream = wire.stub(endpoint, credential=None)
    findings = Findings(settings)

    # Refusals: no token, a wrong token, the token under another scheme. A unary call and a
    # streaming one, since servers install auth per call kind.
    wrong = base64.b64encode(b"hstream:wrong").decode()
    for label, metadata in (
        ("no token", None),
        ("wrong token", basic(wrong)),
        ("wrong scheme", (("authorization", f"Bearer {credential}"),)),
    ):
        refused(
            findings,
            f"DescribeCluster with {label}",
            lambda m=metadata: hstream.DescribeCluster(Empty(), metadata=m, timeout=10),
        )
        refused(
            findings,
            f"ReadStream with {label}",
            lambda m=metadata: list(
                hstream.ReadStream(
                    api.ReadStreamRequest(readerId=unique("rs"), streamName=unique("s")),
                    metadata=m,
                    timeout=10,
                )
            ),
        )

    # The good token works for a real round trip: create, append, read back, delete.
    good = basic(credential)
    try:
        described = hstream.DescribeCluster(Empty(), metadata=good, timeout=10)
    except grpc.RpcError as raw:
        raise AssertionError(
            f"the good token, sent as 'authorization: Basic {credential}' (the token as "
            f"{settings.label} holds it), was refused: {wire.WireError.of(raw)}"
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
        refused(
            findings,
            "Append with no token",
            lambda: hstream.Append(
                api.AppendRequest(
                    streamName=name,
                    shardId=shard.shardId,
                    records=wire.batch([wire.raw_record(b"anonymous")]),
                ),
                timeout=10,
            ),
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
    # Everything else held: now the departures seen, if any, are this check's outcome.
    findings.report()
