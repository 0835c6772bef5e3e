"""API behaviours of profile hstream-0.20 against the protocol profile, on one real node
per profile started with `--tokens hstream:hstream` (test_profile_cluster launches it).

Under hstream-0.20: refused calls are CANCELLED and tokens compared verbatim (hs-grpc);
an unknown admin command is INTERNAL; stream names follow Unicode isLetter/isAlphaNum;
maxUnackedRecords is checked once per read of up to 100 batches; a departed consumer's
in-flight records come back at their ack deadline; the gossip port has no Cli* methods.
Under protocol, the protocol-correct behaviour of each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from test_profile_cluster import PROFILES, ProfileCluster, ProfileNode, profile_cluster

from harness.protos import HStreamGossip_pb2
from refserver import errors, records

pytestmark = pytest.mark.slow

TOKEN = "hstream:hstream"
AUTH = [("authorization", f"Basic {TOKEN}")]
EARLIEST = api.SpecialOffset.Value("EARLIEST")
SCHEDULING_SLACK = 3.0


@dataclass
class Served:
    profile: str
    cluster: ProfileCluster
    node: ProfileNode
    stub: api_grpc.HStreamApiStub

    @property
    def real(self) -> bool:
        return self.profile == "hstream-0.20"


@pytest.fixture(scope="module", params=PROFILES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    profile: str = request.param
    with profile_cluster(tmp_path_factory.mktemp(f"api-{profile}"), profile) as cluster:
        node = cluster.start(1, extra=["--tokens", TOKEN])
        yield Served(profile, cluster, node, cluster.api(node))


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def echo(served: Served, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    return code_of(
        lambda: served.stub.Echo(api.EchoRequest(msg="hi"), metadata=metadata, timeout=5)
    )


# Authentication ----------------------------------------------------------------------------


def test_refused_calls_are_cancelled_without_tls(served: Served) -> None:
    expected = grpc.StatusCode.CANCELLED if served.real else grpc.StatusCode.UNAUTHENTICATED
    assert echo(served, []) == expected
    assert echo(served, [("authorization", "Basic wrong")]) == expected
    describe = code_of(lambda: served.stub.DescribeCluster(empty_pb2.Empty(), timeout=5))
    assert describe == expected


def test_tokens_are_compared_verbatim(served: Served) -> None:
    encoded = base64.b64encode(TOKEN.encode()).decode()
    refused = grpc.StatusCode.CANCELLED if served.real else grpc.StatusCode.OK
    assert echo(served, [("authorization", f"Basic {TOKEN}")]) == grpc.StatusCode.OK
    # protocol: base64(user:password) of a listed token passes too, and the scheme's case
    # does not matter; hstream-0.20: only "Basic " + the listed text itself
    assert echo(served, [("authorization", f"Basic {encoded}")]) == refused
    assert echo(served, [("authorization", f"basic {TOKEN}")]) == refused


# Admin commands ----------------------------------------------------------------------------


def test_unknown_admin_command(served: Served) -> None:
    request = api.AdminCommandRequest(command="server frobnicate")
    try:
        answer = served.stub.SendAdminCommand(request, metadata=AUTH, timeout=5)
    except grpc.RpcError as error:
        assert served.real, f"protocol: expected an error result, got {error.code()}"
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "Parsing admin command error" in (error.details() or "")
        return
    assert not served.real, f"hstream-0.20: expected INTERNAL, got {answer.result}"
    assert json.loads(answer.result)["type"] == "error"


# Names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, real_ok, protocol_ok",
    [
        ("ascii_name-1", True, True),
        ("écho", True, False),
        ("流-1", True, False),
        ("a١٢", True, False),  # Arabic-Indic digits: isAlphaNum
        ("1abc", False, False),
        ("a.b", False, False),
        ("a b", False, False),
        ("a" * 256, False, False),
    ],
    ids=["ascii", "latin", "cjk", "arabic-digits", "digit-first", "dot", "space", "too-long"],
)
def test_stream_names(served: Served, name: str, real_ok: bool, protocol_ok: bool) -> None:
    request = api.Stream(streamName=name, replicationFactor=1, shardCount=1)
    try:
        served.stub.CreateStream(request, metadata=AUTH, timeout=5)
        accepted = True
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert json.loads(error.details() or "{}")["error"] == errors.INVALID_STREAM_NAME
        accepted = False
    assert accepted == (real_ok if served.real else protocol_ok), f"{served.profile}: {name!r}"
    if accepted:
        delete = api.DeleteStreamRequest(streamName=name)
        served.stub.DeleteStream(delete, metadata=AUTH, timeout=5)


# Subscriptions -----------------------------------------------------------------------------


def single_records(stub: api_grpc.HStreamApiStub, stream: str, count: int) -> None:
    """A one-shard stream holding `count` batches of one record each."""
    stub.CreateStream(
        api.Stream(streamName=stream, replicationFactor=1, shardCount=1), metadata=AUTH, timeout=5
    )
    shard = stub.ListShards(
        api.ListShardsRequest(streamName=stream), metadata=AUTH, timeout=5
    ).shards[0]
    for i in range(count):
        record = api.HStreamRecord(
            header=api.HStreamRecordHeader(flag=api.HStreamRecordHeader.Flag.RAW),
            payload=f"{stream}-{i}".encode(),
        )
        batch = records.encode([record])
        stub.Append(
            api.AppendRequest(streamName=stream, shardId=shard.shardId, records=batch),
            metadata=AUTH,
            timeout=5,
        )


def subscribe(
    stub: api_grpc.HStreamApiStub,
    subscription: str,
    stream: str,
    ack_timeout: int,
    max_unacked: int,
) -> None:
    stub.CreateSubscription(
        api.Subscription(
            subscriptionId=subscription,
            streamName=stream,
            ackTimeoutSeconds=ack_timeout,
            maxUnackedRecords=max_unacked,
            offset=EARLIEST,
        ),
        metadata=AUTH,
        timeout=5,
    )


class Consumer:
    """One StreamingFetch call that never acks; `received` holds (arrival, record id)."""

    def __init__(self, channel: grpc.aio.Channel, subscription: str, name: str) -> None:
        self._stub = api_grpc.HStreamApiStub(channel)
        self._subscription = subscription
        self._name = name
        self._closed = asyncio.Event()
        self.received: list[tuple[float, tuple[int, int, int]]] = []
        self._call: grpc.aio.StreamStreamCall | None = None
        self._task: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[api.StreamingFetchRequest]:
        yield api.StreamingFetchRequest(subscriptionId=self._subscription, consumerName=self._name)
        await self._closed.wait()

    async def _read(self) -> None:
        assert self._call is not None
        async for response in self._call:
            now = time.monotonic()
            for rid in response.receivedRecords.recordIds:
                self.received.append((now, (rid.shardId, rid.batchId, rid.batchIndex)))

    def start(self) -> None:
        self._call = self._stub.StreamingFetch(self._requests(), metadata=AUTH)
        self._task = asyncio.create_task(self._read())

    async def leave(self) -> None:
        """Half-close the request stream: the server ends the consumer."""
        self._closed.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, grpc.aio.AioRpcError):
                pass
        if self._call is not None:
            self._call.cancel()


def test_unacked_limit_checked_per_read(served: Served) -> None:
    # 20 batches of one record, maxUnackedRecords 5, nothing acked. protocol: reading
    # stops at 5; hstream-0.20: the first read takes every batch (up to 100) and sends all.
    stream = subscription = f"flow_{served.profile.replace('.', '_').replace('-', '_')}"
    single_records(served.stub, stream, 20)
    subscribe(served.stub, subscription, stream, ack_timeout=60, max_unacked=5)
    expected = 20 if served.real else 5

    async def consume() -> int:
        async with grpc.aio.insecure_channel(served.node.url) as channel:
            consumer = Consumer(channel, subscription, "c1")
            consumer.start()
            deadline = time.monotonic() + 2.0 + SCHEDULING_SLACK
            while len(consumer.received) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # nothing more may come
            await consumer.leave()
            return len(consumer.received)

    got = asyncio.run(consume())
    assert got == expected, (
        f"{served.profile}: {got} records delivered unacked, expected {expected}"
    )


def test_departed_consumers_records_return_at_their_deadline(served: Served) -> None:
    # c1 receives 3 records and leaves without acking; c2 (waiting: one shard) takes the
    # shard. protocol: c2 gets them at once; hstream-0.20: at their ack deadline (4 s
    # after c1 got them).
    stream = subscription = f"depart_{served.profile.replace('.', '_').replace('-', '_')}"
    ack_timeout = 4
    single_records(served.stub, stream, 3)
    subscribe(served.stub, subscription, stream, ack_timeout=ack_timeout, max_unacked=100)

    async def consume() -> tuple[float, float, float]:
        async with grpc.aio.insecure_channel(served.node.url) as channel:
            first, second = (
                Consumer(channel, subscription, "c1"),
                Consumer(channel, subscription, "c2"),
            )
            first.start()
            deadline = time.monotonic() + 10
            while len(first.received) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert len(first.received) == 3, f"c1 got {first.received}"
            delivered = first.received[-1][0]
            second.start()
            await asyncio.sleep(0.5)
            left = time.monotonic()
            await first.leave()
            deadline = time.monotonic() + ack_timeout + 2 * SCHEDULING_SLACK
            while len(second.received) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert {r for _, r in second.received} == {r for _, r in first.received}, (
                f"c2 got {second.received}, c1 had {first.received}"
            )
            await second.leave()
            return delivered, left, second.received[-1][0]

    delivered, left, redelivered = asyncio.run(consume())
    after_leave = redelivered - left
    if served.real:
        assert redelivered - delivered >= ack_timeout - 0.2, (
            f"hstream-0.20: redelivered {redelivered - delivered:.2f} s after delivery, "
            f"before the {ack_timeout} s ack deadline"
        )
    else:
        assert after_leave <= 1.0 + SCHEDULING_SLACK and redelivered - delivered < ack_timeout, (
            f"protocol: redelivered {after_leave:.2f} s after c1 left"
        )
    print(
        f"{served.profile}: redelivered {after_leave:.2f} s after the leave, "
        f"{redelivered - delivered:.2f} s after the first delivery"
    )


# Gossip service ----------------------------------------------------------------------------


def test_cli_cluster(served: Served) -> None:
    gossip = served.cluster.gossip(served.node)
    code = code_of(lambda: gossip.CliCluster(HStreamGossip_pb2.Empty(), timeout=5))
    assert code == (grpc.StatusCode.UNIMPLEMENTED if served.real else grpc.StatusCode.OK)
    seen = code_of(lambda: gossip.CliGetSeenEvents(HStreamGossip_pb2.Empty(), timeout=5))
    assert seen == code
    # what the real server does register still answers
    assert gossip.SendPing(HStreamGossip_pb2.Ping(), timeout=5) is not None
