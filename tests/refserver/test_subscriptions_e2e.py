"""StreamingFetch end to end: a real store process, the subscription service behind a real
grpc.aio server, and the official `hstreamdb` Python client's consumer.

The node here is a single-node HServer reduced to what a subscription needs: the
subscription RPCs (the service under test), DescribeCluster and LookupSubscription (the
client bootstraps and routes with them). Streams and records are written straight into
the store in the layout the API layer uses (`streams/{name}`, `shards/{id}`, one store
entry per BatchedRecord), so these tests depend on nothing but the store and the engine.
Each seeded subscription defect is shown to break the property its test checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from hstreamdb.aio.client import HStreamDBClient, insecure_client
from hstreamdb.types import Record, RecordId
from hstreamdb.utils import encode_records
from refcluster_launcher import (
    RefCluster,
    SingleNodeMembership,
    free_port,
    launch,
    running_store,
)

from refserver import errors
from refserver.api.subscriptions import SubscriptionService
from refserver.errors import HStreamError
from refserver.membership import NodeAddress
from refserver.protos import Store_pb2, Store_pb2_grpc

EARLIEST = api.SpecialOffset.Value("EARLIEST")
LATEST = api.SpecialOffset.Value("LATEST")
# Long enough for a delivery, an ack and a checkpoint write on a loaded 2-core machine.
SETTLE = 1.5
# How long the subscription's owner may take to list both consumers of the three-node
# test: each one's LookupSubscription and StreamingFetch on a loaded 2-core machine.
CONSUMERS_JOINED_S = 20.0

pytestmark = pytest.mark.slow


# The store process -----------------------------------------------------------------------


@pytest.fixture
def store_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A store per test: the tests name their streams and subscriptions, and a test run again
    # (--repeat) must not meet what its earlier run left in a shared store.
    with running_store(tmp_path_factory.mktemp("store")) as address:
        yield address


# A single-node server around the service ---------------------------------------------------


class FixedOwnership:
    """Every subscription is owned by one node: this one, or a peer that is not running.

    With one node this is the whole truth; `owned=False` shows which RPCs enforce
    ownership (§3) without a second node.
    """

    def __init__(self, node: NodeAddress, owned: bool) -> None:
        self._node = node
        self._owner = node if owned else NodeAddress(2, "127.0.0.2", node.port, "127.0.0.2", 0)

    async def owner(self, kind: str, resource_id: str) -> NodeAddress:
        return self._owner

    async def check_owner(
        self, kind: str, resource_id: str, context: grpc.aio.ServicerContext
    ) -> None:
        if self._owner != self._node:
            raise HStreamError(
                grpc.StatusCode.FAILED_PRECONDITION,
                errors.WRONG_SERVER,
                f"{kind} {resource_id!r} is served by node {self._owner.id}",
            )


class SubscriptionNode(api_grpc.HStreamApiServicer):
    def __init__(self, service: SubscriptionService, node: NodeAddress) -> None:
        self.service = service
        self.node = node

    async def DescribeCluster(self, request, context):  # type: ignore[no-untyped-def]
        return api.DescribeClusterResponse(
            protocolVersion="0.1.0",
            serverNodes=[api.ServerNode(id=self.node.id, host=self.node.host, port=self.node.port)],
        )

    async def LookupSubscription(self, request, context):  # type: ignore[no-untyped-def]
        return api.LookupSubscriptionResponse(
            subscriptionId=request.subscriptionId,
            serverNode=api.ServerNode(id=self.node.id, host=self.node.host, port=self.node.port),
        )

    async def CreateSubscription(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.CreateSubscription(request, context)

    async def GetSubscription(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.GetSubscription(request, context)

    async def ListSubscriptions(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.ListSubscriptions(request, context)

    async def ListSubscriptionsWithPrefix(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.ListSubscriptionsWithPrefix(request, context)

    async def CheckSubscriptionExist(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.CheckSubscriptionExist(request, context)

    async def DeleteSubscription(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.DeleteSubscription(request, context)

    async def ListConsumers(self, request, context):  # type: ignore[no-untyped-def]
        return await self.service.ListConsumers(request, context)

    async def StreamingFetch(self, request_iterator, context):  # type: ignore[no-untyped-def]
        # grpc.aio treats a handler as server-streaming only if it is an async generator
        # function, so re-yield rather than return the service's generator.
        async for response in self.service.StreamingFetch(request_iterator, context):
            yield response


@contextlib.asynccontextmanager
async def running_node(
    store_address: str, port: int, defects: frozenset[str] = frozenset(), owned: bool = True
) -> AsyncIterator[Store_pb2_grpc.StoreStub]:
    """A node serving on `port` until the block ends; yields its store stub."""
    node = NodeAddress(id=1, host="127.0.0.1", port=port, gossip_host="127.0.0.1", gossip_port=0)
    channel = grpc.aio.insecure_channel(store_address)
    store = Store_pb2_grpc.StoreStub(channel)
    service = SubscriptionService(
        store, SingleNodeMembership(node), FixedOwnership(node, owned), defects, node
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    api_grpc.add_HStreamApiServicer_to_server(SubscriptionNode(service, node), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise RuntimeError(f"port {port} was taken between choosing and binding it")
    await server.start()
    await service.start()
    try:
        yield store
    finally:
        await service.stop()
        await server.stop(grace=0.5)
        await channel.close()


_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000 + os.getpid() % 1000)


async def create_stream(store: Store_pb2_grpc.StoreStub, name: str, shard_count: int) -> list[int]:
    shards = [next(_ids) for _ in range(shard_count)]
    await store.MetaPut(
        Store_pb2.MetaPutReq(
            key=f"streams/{name}",
            value=json.dumps(
                {
                    "name": name,
                    "replicationFactor": 1,
                    "backlogDuration": 0,
                    "shardCount": shard_count,
                    "creationTimeMs": int(time.time() * 1000),
                    "shards": shards,
                }
            ).encode(),
            expected_version=0,
        )
    )
    return shards


async def append(store: Store_pb2_grpc.StoreStub, shard: int, payloads: list[str]) -> int:
    """Append one batch; returns its lsn (the batchId consumers see)."""
    batch = encode_records(payloads)
    reply = await store.Append(
        Store_pb2.AppendReq(log_id=shard, payload=batch.SerializeToString(), durable=True)
    )
    return int(reply.lsn)


# The official consumer ---------------------------------------------------------------------


class Collector:
    """An official `hstreamdb` consumer that records every delivery and acks by policy."""

    def __init__(
        self,
        client: HStreamDBClient,
        subscription: str,
        name: str,
        should_ack: Callable[[Record], bool] = lambda record: True,
    ) -> None:
        self.name = name
        self.should_ack = should_ack
        self.deliveries: list[list[Record]] = []
        self.acked: list[RecordId] = []
        self.consumer = client.new_consumer(name, subscription, self._process)
        self.task: asyncio.Task[None] | None = None

    async def _process(
        self,
        ack: Callable[[list[RecordId]], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        records: Iterator[Record],
    ) -> None:
        batch = list(records)
        self.deliveries.append(batch)
        chosen = [r.id for r in batch if self.should_ack(r)]
        if chosen:
            self.acked += chosen
            await ack(chosen)

    def start(self) -> Collector:
        self.task = asyncio.create_task(self.consumer.start())
        return self

    async def stop(self) -> None:
        # The consumer's own stop (the `stop` its callback receives) cancels the call.
        if self.task is not None and not self.task.done():
            await self.consumer._stop()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await asyncio.wait_for(self.task, 5)

    def ids(self) -> list[RecordId]:
        return [r.id for batch in self.deliveries for r in batch]

    def payloads(self) -> list[bytes]:
        return [r.payload for batch in self.deliveries for r in batch]


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def run(scenario: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 60))


def error_code(error: grpc.aio.AioRpcError) -> int:
    return int(json.loads(error.details() or "{}").get("error", -1))


# Tests -------------------------------------------------------------------------------------


def test_earliest_and_latest_start_where_the_subscription_was_created(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            [shard] = await create_stream(store, "offsets", 1)
            first = await append(store, shard, ["e1", "e2", "e3"])
            async with await insecure_client(port=port) as client:
                await client.create_subscription("offsets-earliest", "offsets", offset=EARLIEST)
                await client.create_subscription("offsets-latest", "offsets", offset=LATEST)
                second = await append(store, shard, ["l1", "l2"])
                earliest = Collector(client, "offsets-earliest", "c1").start()
                latest = Collector(client, "offsets-latest", "c2").start()
                await wait_until(lambda: len(earliest.ids()) >= 5, 10, "5 earliest records")
                await wait_until(lambda: len(latest.ids()) >= 2, 10, "2 latest records")
                await asyncio.sleep(0.3)
                await earliest.stop()
                await latest.stop()
        assert earliest.payloads() == [b"e1", b"e2", b"e3", b"l1", b"l2"]
        assert latest.payloads() == [b"l1", b"l2"], "LATEST is fixed at creation time"
        assert earliest.ids() == [RecordId(shard, first, i) for i in range(3)] + [
            RecordId(shard, second, i) for i in range(2)
        ]
        assert [len(batch) for batch in earliest.deliveries] == [3, 2], "one response per batch"
        publish = earliest.deliveries[0][0].header.publish_time
        assert abs(publish.seconds - time.time()) < 60, (
            f"publishTime not the append time: {publish}"
        )

    run(scenario())


def observe_partial_ack(store_address: str, defects: frozenset[str]) -> Collector:
    """One batch of 4; the consumer acks records 0 and 2 only on their first delivery."""

    async def scenario() -> Collector:
        port = free_port("127.0.0.1")
        seen: set[RecordId] = set()

        def first_time_even(record: Record) -> bool:
            again = record.id in seen
            seen.add(record.id)
            return again or record.id.batch_index % 2 == 0

        async with running_node(store_address, port, defects) as store:
            stream = f"redeliver{len(defects)}{'-'.join(sorted(defects))}"
            [shard] = await create_stream(store, stream, 1)
            async with await insecure_client(port=port) as client:
                await client.create_subscription(
                    f"sub-{stream}", stream, ack_timeout=1, offset=EARLIEST
                )
                await append(store, shard, ["a", "b", "c", "d"])
                collector = Collector(client, f"sub-{stream}", "c", first_time_even).start()
                # Deadline 1 s, redelivery tick 0.1 s: 3.5 s leaves room for a redelivery
                # and for a (wrong) second one.
                await asyncio.sleep(3.5)
                await collector.stop()
        return collector

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def test_ack_timeout_redelivers_only_the_unacked_records(store_address: str) -> None:
    collector = observe_partial_ack(store_address, frozenset())
    batches = [[r.id.batch_index for r in batch] for batch in collector.deliveries]
    assert batches == [[0, 1, 2, 3], [1, 3]], (
        f"expected the full batch, then one rebuilt batch with only records 1 and 3; saw {batches}"
    )
    assert [r.payload for r in collector.deliveries[1]] == [b"b", b"d"]


@pytest.mark.parametrize("defect", ["no-redelivery", "redeliver-acked"])
def test_redelivery_defects_are_observable(store_address: str, defect: str) -> None:
    collector = observe_partial_ack(store_address, frozenset({defect}))
    batches = [[r.id.batch_index for r in batch] for batch in collector.deliveries]
    assert batches != [[0, 1, 2, 3], [1, 3]], f"defect {defect} did not change delivery: {batches}"
    if defect == "no-redelivery":
        assert batches == [[0, 1, 2, 3]], f"unacked records 1 and 3 were resent: {batches}"
    else:
        resent = sorted(i for batch in batches[1:] for i in batch)
        assert 0 in resent and 2 in resent, f"acked records 0 and 2 not resent: {batches}"


def test_reading_pauses_at_max_unacked_records(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        hold = True
        async with running_node(store_address, port) as store:
            [shard] = await create_stream(store, "flow", 1)
            async with await insecure_client(port=port) as client:
                await client.create_subscription(
                    "flow-sub", "flow", ack_timeout=60, max_unacks=3, offset=EARLIEST
                )
                for n in range(6):
                    await append(store, shard, [f"r{n}"])
                collector = Collector(client, "flow-sub", "c", lambda record: not hold).start()
                await wait_until(lambda: len(collector.ids()) >= 3, 10, "the first 3 records")
                await asyncio.sleep(SETTLE)
                paused = collector.payloads()
                assert paused == [b"r0", b"r1", b"r2"], (
                    f"with maxUnackedRecords=3 and nothing acked, expected 3 records; saw {paused}"
                )
                hold = False
                # The held records are acked late, through the consumer's own ack path.
                await collector.consumer._ack(collector.ids())
                await wait_until(lambda: len(collector.ids()) >= 6, 10, "the other 3 records")
                await collector.stop()
                assert collector.payloads() == [f"r{n}".encode() for n in range(6)]

    run(scenario())


def test_two_consumers_split_the_shards_and_a_leaver_loses_nothing(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            shards = await create_stream(store, "split", 2)
            async with await insecure_client(port=port) as client:
                await client.create_subscription(
                    "split-sub", "split", ack_timeout=30, offset=EARLIEST
                )
                # "a" never acks: whatever it got must reach "b" once "a" leaves, long
                # before the 30 s ack timeout.
                a = Collector(client, "split-sub", "a", lambda record: False).start()
                b = Collector(client, "split-sub", "b").start()
                await asyncio.sleep(SETTLE)
                written = {}
                for n in range(4):
                    for shard in shards:
                        lsn = await append(store, shard, [f"{shard}-{n}"])
                        written[RecordId(shard, lsn, 0)] = f"{shard}-{n}".encode()
                await wait_until(
                    lambda: len(a.ids()) + len(b.ids()) >= 8, 10, "8 records over a and b"
                )
                a_shards = {i.shard_id for i in a.ids()}
                b_shards = {i.shard_id for i in b.ids()}
                assert len(a_shards) == 1 and len(b_shards) == 1 and a_shards != b_shards, (
                    f"each consumer should read one shard: a {a_shards}, b {b_shards}"
                )
                await a.stop()
                for shard in shards:
                    lsn = await append(store, shard, [f"{shard}-late"])
                    written[RecordId(shard, lsn, 0)] = f"{shard}-late".encode()
                await wait_until(lambda: set(b.acked) >= set(written), 10, "b to ack every record")
                await b.stop()
                got = {r.id: r.payload for batch in b.deliveries for r in batch}
                assert {i: got[i] for i in written} == written
                assert set(a.ids()) <= set(b.ids()), "a's unacked records went to b"

    run(scenario())


def test_duplicate_consumer_name_is_rejected(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            await create_stream(store, "dup", 1)
            async with await insecure_client(port=port) as client:
                await client.create_subscription("dup-sub", "dup")
                first = Collector(client, "dup-sub", "same").start()
                await asyncio.sleep(0.5)
                second = client.new_consumer("same", "dup-sub", lambda *args: None)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await asyncio.wait_for(second.start(), 10)
                assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, caught.value
                assert first.task is not None and not first.task.done(), "first consumer kept"
                await first.stop()

    run(scenario())


def test_delete_subscription_with_and_without_force(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            await create_stream(store, "del", 1)
            async with await insecure_client(port=port) as client:
                await client.create_subscription("del-sub", "del")
                consumer = Collector(client, "del-sub", "keeper").start()
                await asyncio.sleep(0.5)
                stub = api_grpc.HStreamApiStub(client._channels[f"127.0.0.1:{port}"])
                listed = await stub.ListConsumers(
                    api.ListConsumersRequest(subscriptionId="del-sub")
                )
                assert [c.name for c in listed.consumers] == ["keeper"]
                assert listed.consumers[0].uri.startswith("ipv4:127.0.0.1:"), listed
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.delete_subscription("del-sub")
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert error_code(caught.value) == 305, caught.value.details()
                assert await client.does_subscription_exist("del-sub")

                await client.delete_subscription("del-sub", force=True)
                assert consumer.task is not None
                await asyncio.wait_for(consumer.task, 5)  # the stream ended: start() returns
                assert not await client.does_subscription_exist("del-sub")
                names = [s.subscription_id for s in await client.list_subscriptions()]
                assert "del-sub" not in names
                await client.create_subscription("del-sub", "del")  # the id is free again

    run(scenario())


def test_subscription_errors(store_address: str) -> None:
    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            await create_stream(store, "errs", 1)
            stub_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stub = api_grpc.HStreamApiStub(stub_channel)
            cases = [
                (api.Subscription(subscriptionId="errsub1", streamName="nope"), 9, 302),
                (api.Subscription(subscriptionId="1bad", streamName="errs"), 3, 304),
            ]
            await stub.CreateSubscription(
                api.Subscription(subscriptionId="errsub1", streamName="errs")
            )
            cases.append((api.Subscription(subscriptionId="errsub1", streamName="errs"), 6, 301))
            for request, status, code in cases:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.CreateSubscription(request)
                seen = (caught.value.code().value[0], error_code(caught.value))
                assert seen == (status, code), f"{request}: expected {(status, code)}, saw {seen}"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetSubscription(api.GetSubscriptionRequest(id="missing"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_code(caught.value) == 300
            call = stub.StreamingFetch(
                iter([api.StreamingFetchRequest(subscriptionId="missing", consumerName="c")])
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_code(caught.value) == 300
            found = await stub.ListSubscriptionsWithPrefix(
                api.ListSubscriptionsWithPrefixRequest(prefix="errsub")
            )
            assert [s.subscriptionId for s in found.subscription] == ["errsub1"]
            await stub_channel.close()

    run(scenario())


def observe_restart(store_address: str, defects: frozenset[str]) -> tuple[Collector, list[int]]:
    """Acks the first two of three batches, restarts the node, reconnects a consumer."""

    async def scenario() -> tuple[Collector, list[int]]:
        port = free_port("127.0.0.1")
        stream = f"restart{len(defects)}"
        sub = f"{stream}-sub"
        async with running_node(store_address, port, defects) as store:
            [shard] = await create_stream(store, stream, 1)
            async with await insecure_client(port=port) as client:
                await client.create_subscription(sub, stream, ack_timeout=30, offset=EARLIEST)
                lsns = [await append(store, shard, [f"b{n}-0", f"b{n}-1"]) for n in range(3)]
                before = Collector(
                    client, sub, "c", lambda record: record.id.batch_id != lsns[2]
                ).start()
                await wait_until(lambda: len(before.ids()) >= 6, 10, "6 records before restart")
                await asyncio.sleep(SETTLE)  # the checkpoint write
                stub = api_grpc.HStreamApiStub(client._channels[f"127.0.0.1:{port}"])
                offsets = await stub.GetSubscription(api.GetSubscriptionRequest(id=sub))
                await before.stop()
        # A new node process state: nothing carried over but the store.
        async with running_node(store_address, port, defects):
            async with await insecure_client(port=port) as client:
                after = Collector(client, sub, "c").start()
                await wait_until(lambda: len(after.ids()) >= 2, 10, "records after restart")
                await asyncio.sleep(SETTLE)
                await after.stop()
        assert [o.batchId for o in offsets.offsets] == [lsns[2]], (
            f"GetSubscription offset should be the first unacked batch {lsns[2]}: {offsets}"
        )
        return after, lsns

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def test_restart_resumes_from_the_checkpoint(store_address: str) -> None:
    after, lsns = observe_restart(store_address, frozenset())
    assert after.payloads() == [b"b2-0", b"b2-1"], (
        f"after a restart only the unacked batch {lsns[2]} is due; saw {after.ids()}"
    )


def test_lost_checkpoint_defect_is_observable(store_address: str) -> None:
    after, lsns = observe_restart(store_address, frozenset({"lost-checkpoint"}))
    assert after.payloads()[:2] == [b"b0-0", b"b0-1"], (
        f"with lost-checkpoint the restart should start from the initial offset: {after.ids()}"
    )


def test_a_node_resumes_where_another_node_left_off(store_address: str) -> None:
    """Servers are stateless: progress made on node 2 is honoured by node 1's idle state."""

    async def scenario() -> None:
        port_1, port_2 = free_port("127.0.0.1"), free_port("127.0.0.1")
        async with (
            running_node(store_address, port_1) as store,
            running_node(store_address, port_2),
        ):
            [shard] = await create_stream(store, "handover", 1)
            async with (
                await insecure_client(port=port_1) as client_1,
                await insecure_client(port=port_2) as client_2,
            ):
                await client_1.create_subscription("handover-sub", "handover", offset=EARLIEST)
                await append(store, shard, ["one"])
                on_1 = Collector(client_1, "handover-sub", "c").start()
                await wait_until(lambda: len(on_1.acked) == 1, 10, "'one' acked on node 1")
                await asyncio.sleep(SETTLE)
                await on_1.stop()  # node 1 keeps an idle state at the checkpoint after 'one'

                await append(store, shard, ["two"])
                on_2 = Collector(client_2, "handover-sub", "c").start()
                await wait_until(lambda: len(on_2.acked) >= 1, 10, "'two' acked on node 2")
                await asyncio.sleep(SETTLE)
                await on_2.stop()

                await append(store, shard, ["three"])
                again_1 = Collector(client_1, "handover-sub", "c").start()
                await wait_until(lambda: len(again_1.acked) >= 1, 10, "'three' on node 1")
                await asyncio.sleep(SETTLE)
                await again_1.stop()
        assert on_2.payloads() == [b"two"], f"node 2 started past node 1's checkpoint: {on_2.ids()}"
        assert again_1.payloads() == [b"three"], (
            f"node 1 must drop its idle state once node 2 moved the checkpoint: {again_1.ids()}"
        )

    run(scenario())


CHURN_SEED = int(os.environ.get("SUBSCRIPTION_CHURN_SEED", "20240611"))


def test_consumer_churn_with_dropped_acks_loses_nothing(store_address: str) -> None:
    """Consumers join and leave at seeded times and drop a third of their acks; every
    record must still end up acked by someone, and in shard order per delivery."""
    rng = random.Random(CHURN_SEED)
    schedule = [(rng.choice("xyz"), rng.uniform(0.2, 0.6)) for _ in range(8)]

    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port) as store:
            shards = await create_stream(store, "churn", 3)
            written: dict[RecordId, bytes] = {}
            async with await insecure_client(port=port) as client:
                await client.create_subscription(
                    "churn-sub", "churn", ack_timeout=1, max_unacks=20, offset=EARLIEST
                )
                for n in range(10):
                    for shard in shards:
                        payloads = [f"{shard}-{n}-{i}" for i in range(rng.randint(1, 3))]
                        lsn = await append(store, shard, payloads)
                        for i, payload in enumerate(payloads):
                            written[RecordId(shard, lsn, i)] = payload.encode()
                live: dict[str, Collector] = {}
                finished: list[Collector] = []
                for name, pause in schedule:
                    if name in live:
                        await live.pop(name).stop()
                    else:
                        live[name] = Collector(
                            client, "churn-sub", name, lambda record: rng.random() > 1 / 3
                        ).start()
                        finished.append(live[name])
                    await asyncio.sleep(pause)
                # A last reliable consumer drains whatever is left.
                drain = Collector(client, "churn-sub", "drain").start()
                finished.append(drain)

                def acked() -> set[RecordId]:
                    return {i for c in finished for i in c.acked}

                await wait_until(
                    lambda: acked() >= set(written),
                    30,
                    f"every record acked (seed {CHURN_SEED}, schedule {schedule})",
                )
                for collector in live.values():
                    await collector.stop()
                await drain.stop()
        seen = {r.id: r.payload for c in finished for batch in c.deliveries for r in batch}
        assert {i: seen[i] for i in written} == written, f"seed {CHURN_SEED}"
        assert set(seen) == set(written), f"unexpected records: {set(seen) - set(written)}"
        for collector in finished:
            for batch in collector.deliveries:
                ids = [r.id for r in batch]
                assert len({(i.shard_id, i.batch_id) for i in ids}) == 1, ids
                assert [i.batch_index for i in ids] == sorted({i.batch_index for i in ids}), ids

    run(scenario())


def test_ownership_is_enforced_where_hstreamdb_enforces_it(store_address: str) -> None:
    """GetSubscription, ListConsumers and DeleteSubscription answer 9/800 on a node that does
    not own the subscription; CreateSubscription and StreamingFetch do not check (§3)."""

    async def scenario() -> None:
        port = free_port("127.0.0.1")
        async with running_node(store_address, port, owned=False) as store:
            [shard] = await create_stream(store, "owned", 1)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stub = api_grpc.HStreamApiStub(channel)
            await stub.CreateSubscription(
                api.Subscription(
                    subscriptionId="owned-sub",
                    streamName="owned",
                    ackTimeoutSeconds=30,
                    maxUnackedRecords=100,
                    offset=EARLIEST,
                )
            )
            for name, call in [
                (
                    "GetSubscription",
                    stub.GetSubscription(api.GetSubscriptionRequest(id="owned-sub")),
                ),
                (
                    "ListConsumers",
                    stub.ListConsumers(api.ListConsumersRequest(subscriptionId="owned-sub")),
                ),
                (
                    "DeleteSubscription",
                    stub.DeleteSubscription(
                        api.DeleteSubscriptionRequest(subscriptionId="owned-sub", force=True)
                    ),
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                seen = (caught.value.code(), error_code(caught.value))
                assert seen == (grpc.StatusCode.FAILED_PRECONDITION, 800), f"{name}: {seen}"
            await append(store, shard, ["anywhere"])
            async with await insecure_client(port=port) as client:
                consumer = Collector(client, "owned-sub", "c").start()
                await wait_until(lambda: len(consumer.ids()) == 1, 10, "StreamingFetch to work")
                await consumer.stop()
            await channel.close()
        assert consumer.payloads() == [b"anywhere"]

    run(scenario())


# On real `python -m refserver` processes ----------------------------------------------------


def test_official_client_on_a_three_node_cluster(tmp_path: Path) -> None:
    """Consumers reach the owner through LookupSubscription and split its shards; the
    owner-only RPCs answer 9/800 elsewhere; nothing appended is lost.

    Records are appended only once the owner lists both consumers: a consumer that joins
    alone takes every shard (§4) and reads everything already there at once, and the
    newcomer then takes a shard whose records were all delivered, so "each consumer reads
    some shard" holds only for records appended after both joined.
    """

    async def scenario(cluster: RefCluster) -> None:
        entry = cluster.nodes[0]
        async with await insecure_client(host=entry.host, port=entry.port) as client:
            await client.create_stream("cluster-s", shard_count=3)
            await client.create_subscription(
                "cluster-sub", "cluster-s", ack_timeout=5, offset=EARLIEST
            )
            owner = await client._lookup_subscription_api("cluster-sub")
            owner_node = next(n for n in cluster.nodes if n.url == f"{owner.host}:{owner.port}")
            first = Collector(client, "cluster-sub", "c1").start()
            second = Collector(client, "cluster-sub", "c2").start()
            # A join reassigns at once: when the owner lists both, c2 holds one of the
            # three shards and c1 the other two.
            listed: list[str] = []

            async def both_joined() -> bool:
                async with grpc.aio.insecure_channel(owner_node.url) as channel:
                    reply = await api_grpc.HStreamApiStub(channel).ListConsumers(
                        api.ListConsumersRequest(subscriptionId="cluster-sub"), timeout=2
                    )
                listed[:] = sorted(c.name for c in reply.consumers)
                return listed == ["c1", "c2"]

            deadline = time.monotonic() + CONSUMERS_JOINED_S
            while not await both_joined():
                assert time.monotonic() < deadline, (
                    f"the owner {owner_node.url} listed {listed}, not c1 and c2, within "
                    f"{CONSUMERS_JOINED_S} s (logs: {cluster.logs()})"
                )
                await asyncio.sleep(0.05)
            written: dict[RecordId, bytes] = {}
            # Keys k0..k5 hash onto all three shards, so both consumers get records.
            for n in range(24):
                payload = f"k{n % 6}-{n}"
                [record_id] = await client.append("cluster-s", [payload], key=f"k{n % 6}")
                written[record_id] = payload.encode()
            await wait_until(
                lambda: set(first.acked) | set(second.acked) >= set(written),
                20,
                f"every record acked (logs: {cluster.logs()})",
            )
            for node in cluster.nodes:
                async with grpc.aio.insecure_channel(node.url) as channel:
                    stub = api_grpc.HStreamApiStub(channel)
                    request = api.ListConsumersRequest(subscriptionId="cluster-sub")
                    if node is owner_node:
                        listed = await stub.ListConsumers(request)
                        assert sorted(c.name for c in listed.consumers) == ["c1", "c2"]
                        continue
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.ListConsumers(request)
                    assert error_code(caught.value) == errors.WRONG_SERVER, caught.value
            await first.stop()
            await second.stop()
        got = {r.id: r.payload for c in (first, second) for b in c.deliveries for r in b}
        assert got == written, f"lost {set(written) - set(got)}; logs: {cluster.logs()}"
        shards_1 = {i.shard_id for i in first.ids()}
        shards_2 = {i.shard_id for i in second.ids()}
        assert shards_1 and shards_2 and not shards_1 & shards_2, (
            f"consumers should read disjoint shards: c1 {shards_1}, c2 {shards_2}"
        )

    with launch(tmp_path, 3) as cluster:
        run(scenario(cluster))


def observe_kill_and_restart(tmp_path: Path, defects: list[str]) -> tuple[list[bytes], str]:
    """Ack 2 of 3 batches, kill -9 the node, restart it, and consume again."""

    async def before(cluster: RefCluster) -> None:
        node = cluster.nodes[0]
        async with await insecure_client(host=node.host, port=node.port) as client:
            await client.create_stream("killed", shard_count=1)
            await client.create_subscription(
                "killed-sub", "killed", ack_timeout=30, offset=EARLIEST
            )
            ids = [await client.append("killed", [f"b{n}"]) for n in range(3)]
            last_batch = list(ids[2])[0].batch_id
            consumer = Collector(
                client, "killed-sub", "c", lambda record: record.id.batch_id != last_batch
            ).start()
            await wait_until(lambda: len(consumer.ids()) == 3, 10, "3 records before the kill")
            await asyncio.sleep(SETTLE)  # the checkpoint write

    async def after(cluster: RefCluster) -> list[bytes]:
        node = cluster.nodes[0]
        async with await insecure_client(host=node.host, port=node.port) as client:
            consumer = Collector(client, "killed-sub", "c").start()
            await wait_until(lambda: len(consumer.ids()) >= 1, 15, "records after the restart")
            await asyncio.sleep(SETTLE)
            await consumer.stop()
        return consumer.payloads()

    node_args = [arg for defect in defects for arg in ("--defect", defect)]
    with launch(tmp_path, 1, node_args) as cluster:
        asyncio.run(asyncio.wait_for(before(cluster), 60))
        proc = cluster.nodes[0].proc
        proc.kill(signal.SIGKILL)
        proc.start()
        proc.wait_ready(occurrence=2)
        return asyncio.run(asyncio.wait_for(after(cluster), 60)), cluster.logs()


def test_kill_and_restart_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    payloads, logs = observe_kill_and_restart(tmp_path, [])
    assert payloads == [b"b2"], f"only the unacked batch is due after kill -9: {payloads}; {logs}"


def test_kill_and_restart_with_lost_checkpoint_starts_over(tmp_path: Path) -> None:
    payloads, logs = observe_kill_and_restart(tmp_path, ["lost-checkpoint"])
    assert payloads == [b"b0", b"b1", b"b2"], (
        f"lost-checkpoint should replay from the initial offset: {payloads}; {logs}"
    )
