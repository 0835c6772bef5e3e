"""A subscription's serving state when its owner changes, on real reference servers.

HStreamDB moves a subscription only through lookups (the persisted owner is kept while it is
a member, else re-hashed: common/server/HStream/Common/Server/Lookup.hs, lookupNodePersist)
and checks no ownership on StreamingFetch (hstream/src/HStream/Server/Core/Subscription.hs,
initSub: validateResLookup is commented out). A node serves every consumer that reaches it,
from the stored checkpoints, and nothing closes the streams of a node that is no longer the
owner. So two nodes may serve one subscription for a while: consumers whose lookups straddle
a membership change, or a client with a cached lookup. Each consumer's own stream then goes
back only to records it was delivered and did not acknowledge; an ack sent to one node does
not stop the other node's resend, so records come twice (at-least-once).

* Quick returns: the owner (as LookupSubscription names it) is killed -9 and started again
  0-0.5 s later, several times, while the two consumers of the durability suite's queue
  workload fetch and acknowledge; new records must flow after every restart, and the queue
  checker must find nothing under the at-least-once promise.
* Two serving nodes: one consumer follows lookups, the other reads from another node (a
  stale lookup). Both nodes serve every shard, nothing is lost, and what each consumer gets
  below its frontier on a shard is a record it was delivered itself and had not acknowledged.
* One state per node: two consumers reaching a node together, while the node holds an idle
  state of the subscription that another node has moved past, share one fresh state (an
  in-process store; no ports).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from refcluster_launcher import SingleNodeMembership

from harness import wire
from harness.checkers import queue
from harness.checkers.result import Result
from harness.clients.driver import wait_until
from harness.clients.driver_loop import payload_id_of
from harness.history import History, Op, as_ops
from harness.nemesis import FAULTS, Nemesis
from refserver.api.subscription_progress import Position
from refserver.api.subscription_storage import (
    SubscriptionRecord,
    checkpoint_key,
    subscription_key,
)
from refserver.api.subscriptions import SubscriptionService
from refserver.membership import NodeAddress
from refserver.protos import Store_pb2
from refserver.store.engine import StoreEngine
from refserver.store.service import StoreService
from suites.durability.queue_workload import QueueWorkload, subscription_owner
from suites.durability.workload import FAST_GOSSIP

pytestmark = pytest.mark.cluster(
    nodes=3, target="reference", backend="local", defects=(), gossip=FAST_GOSSIP
)
ROUNDS = 6
MAX_RETURN_S = 0.5  # the killed owner is started again this soon at most
WARMUP_RECORDS = 50
MOVED_ON_S = 30.0  # new records after a restart within this long
SETTLE_S = 2.0  # between rounds: past the 2 s ack timeout, held records come again
TWO_NODES_S = 6.0  # both nodes serve the subscription this long
DRAIN_S = 30.0
GRACE_S = 1.0  # an ack sent this shortly before a fetch may be on its way (the checker's)


def judged(path: Path) -> Result:
    result = queue.check(as_ops(path), promise="at-least-once")
    print({kind: result.counts[kind] for kind in queue.KINDS},
          f"{result.counts['deliveries']} deliveries, {result.counts['redeliveries']} again")
    return result


@pytest.fixture
def history_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    print(f"history {path}")
    return path


# -- quick returns of the owner ------------------------------------------------------------


@pytest.mark.slow
def test_quick_returns_of_the_subscription_owner(cluster, history_file: Path) -> None:
    endpoints = [str(n.client) for n in cluster.nodes]
    rng = random.Random()
    moved_on: list[bool] = []
    with History(history_file) as history:
        work = QueueWorkload(endpoints, history)
        work.setup()
        nemesis = Nemesis(cluster, history)
        work.start()
        try:
            assert wait_until(lambda: len(work.delivered()) >= WARMUP_RECORDS, 30), (
                f"fewer than {WARMUP_RECORDS} records delivered; errors: {work.errors}"
            )
            for r in range(ROUNDS):
                owner_at = subscription_owner(endpoints[r % len(endpoints)], work.subscription)
                owner = next(n.id for n in cluster.nodes if str(n.client) == owner_at)
                kill = FAULTS["kill-one"].on(owner)
                back_after = rng.uniform(0, MAX_RETURN_S)
                killed = nemesis.invoke(kill, "start")
                time.sleep(back_after)
                restarted = nemesis.invoke(kill, "stop")
                assert killed is not None and restarted is not None
                print(f"round {r}: node {owner} killed (op {killed.index}), started again "
                      f"{back_after:.2f} s later (op {restarted.index})")
                moved_on.append(work.delivers_new_records_after(restarted.index, MOVED_ON_S))
                time.sleep(SETTLE_S)
        finally:
            work.drain(DRAIN_S)
            nemesis.teardown()
        work.final_read()
    stuck = [r for r, ok in enumerate(moved_on) if not ok]
    assert not stuck, f"no new record after the restart of rounds {stuck}; errors: {work.errors}"
    result = judged(history_file)
    assert result.counts["redeliveries"] > 0, result.counts
    assert result.valid is True, f"{result.summary()}; history {history_file}"


# -- two nodes serving one subscription ------------------------------------------------------


@dataclass
class TwoNodeRun:
    path: Path
    ops: list[Op]
    result: Result
    owner: str
    other: str
    errors: list[str]


def stale_lookup_consumer(
    work: QueueWorkload, endpoint: str, name: str, stop: threading.Event
) -> None:
    """A consumer that reads from `endpoint` whoever owns the subscription, as a client
    that cached an old lookup does; fetches and acks are recorded as the workload's are,
    and it holds back the same records (the workload's own hold rule)."""
    sub, history = work.subscription, work.history
    session = wire.FetchSession(wire.stub(endpoint), sub, name)
    life = history.invoke(f"{name}-life", "consume", {"subscription": sub, "consumer": name})
    try:
        while not stop.is_set():
            fetch = history.invoke(f"consumer-{name}", "fetch",
                                   {"subscription": sub, "consumer": name})
            got = session.take(200, 0.5)
            pids = [payload_id_of(record.payload) or "" for _, record in got]
            ids = [[rid.shardId, rid.batchId, rid.batchIndex] for rid, _ in got]
            records = [{"payload_id": pid, "record_id": rid, "consumer": name}
                       for pid, rid in zip(pids, ids, strict=True)]
            history.ok(fetch, {"subscription": sub, "consumer": name, "records": records})
            acked = [(rid, i) for (rid, _), i, pid in zip(got, ids, pids, strict=True)
                     if not work._hold(pid)]
            if acked:
                value = {"subscription": sub, "consumer": name,
                         "record_ids": [ids for _, ids in acked]}
                ack = history.invoke(f"consumer-{name}", "ack", value)
                session.ack([rid for rid, _ in acked])
                history.ok(ack, value)
        if session.error is not None:
            work.errors.append(f"{name}'s stream on {endpoint} broke: {session.error}")
    finally:
        history.ok(life)
        session.close()


@pytest.fixture(scope="module")
def two_node_run(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeRun]:
    """c1 (the workload's raw-driver consumer) follows lookups to the owner; c2 reads from
    another node; the producer appends meanwhile; then a drain and a final read. The
    workload starts its producer and one consumer here (its `start` starts both)."""
    endpoints = [str(n.client) for n in cluster.nodes]
    path = tmp_path_factory.mktemp("two-nodes") / "history.jsonl"
    print(f"history {path}")
    with History(path) as history:
        work = QueueWorkload(endpoints, history)
        work.setup()
        owner = subscription_owner(endpoints[0], work.subscription)
        other = next(e for e in endpoints if e != owner)
        work.producing.set()
        work.consuming.set()
        work.threads = [threading.Thread(target=work._produce, daemon=True),
                        threading.Thread(target=work._consume, args=("c1",), daemon=True)]
        stop = threading.Event()
        c2 = threading.Thread(target=stale_lookup_consumer, args=(work, other, "c2", stop))
        for thread in [*work.threads, c2]:
            thread.start()
        try:
            time.sleep(TWO_NODES_S)
        finally:
            work.drain(DRAIN_S)
            stop.set()
            c2.join(timeout=30)
        work.final_read()
    yield TwoNodeRun(path, as_ops(path), judged(path), owner, other, work.errors)


def delivered_shards(ops: list[Op], consumer: str) -> set[int]:
    return {r["record_id"][0] for op in ops if op.f == "fetch" and op.type == "ok"
            and op.value.get("consumer") == consumer for r in op.value["records"]}


def appended_shards(ops: list[Op]) -> set[int]:
    """Shards with an acknowledged append (keys are hashed to shards: some may get none)."""
    return {op.value["record_id"][0] for op in ops if op.f == "append" and op.type == "ok"}


def steps_back_to_others(ops: list[Op], consumer: str) -> list[dict[str, Any]]:
    """Records `consumer` got below its highest record of their shard that it had not been
    delivered itself before, or had acknowledged itself at least GRACE_S before the fetch.
    (With one consumer per node, nothing else may come again on its stream.)"""
    grace = int(GRACE_S * 1e9)
    top: dict[int, tuple[int, int]] = {}
    seen: set[tuple[int, int, int]] = set()
    acked_at: dict[tuple[int, int, int], int] = {}
    began = 0
    found = []
    for op in ops:
        value = op.value if isinstance(op.value, dict) else {}
        if value.get("consumer") != consumer:
            continue
        if op.f == "ack" and op.type == "invoke":
            for rid in value["record_ids"]:
                acked_at.setdefault(tuple(rid), op.time)
        elif op.f == "fetch" and op.type == "invoke":
            began = op.time
        elif op.f == "fetch" and op.type == "ok":
            for record in value["records"]:
                rid = tuple(record["record_id"])
                shard, place = rid[0], (rid[1], rid[2])
                if place < top.get(shard, place) and (
                        rid not in seen or acked_at.get(rid, began) <= began - grace):
                    found.append({"record_id": list(rid), "op_index": op.index,
                                  "after": [shard, *top[shard]]})
                top[shard] = max(top.get(shard, place), place)
                seen.add(rid)
    return found


@pytest.mark.slow
def test_two_nodes_serve_one_subscription_and_each_stream_goes_back_only_to_its_own(
    two_node_run: TwoNodeRun,
) -> None:
    run = two_node_run
    assert not run.errors, run.errors
    appended = appended_shards(run.ops)
    for consumer in ("c1", "c2"):
        shards = delivered_shards(run.ops, consumer)
        assert shards == appended, (
            f"{consumer} was served {len(shards)} of the {len(appended)} shards appended to: "
            f"each node serves its consumer every shard (owner {run.owner}, other "
            f"{run.other}); history {run.path}")
        back = steps_back_to_others(run.ops, consumer)
        assert not back, f"{consumer}'s stream went back to records not its own: {back[:5]}"
    failing = {kind: run.result.counts[kind]
               for kind in ("inconsistent_offsets", "lost", "poll_skip") if run.result.counts[kind]}
    assert not failing, f"{run.result.summary()}; history {run.path}"
    assert run.result.counts["duplicates"] > 0, "both nodes deliver each record: duplicates"


@pytest.mark.slow
def test_queue_checker_accepts_two_nodes_serving_one_subscription(
    two_node_run: TwoNodeRun,
) -> None:
    result = two_node_run.result
    assert result.valid is True, f"{result.summary()}; history {two_node_run.path}"


# -- one delivery state per node --------------------------------------------------------------

_late_caller = contextvars.ContextVar("late_caller", default=False)


class InProcessStore:
    """A store stub calling the store service in-process. Calls made by a task marked as
    the late caller answer only once `released` is set."""

    def __init__(self, service: StoreService) -> None:
        self._service = service
        self.released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._service, name)

        async def call(request: Any, **_: Any) -> Any:
            if _late_caller.get():
                await self.released.wait()
            return await method(request, None)

        return call


def test_consumers_arriving_together_share_one_delivery_state(tmp_path: Path) -> None:
    """The node holds an idle state of the subscription, and another node has moved its
    checkpoint since: the first consumer to arrive drops the state and loads a fresh one;
    the second, whose store reads were answered only after that, must join the same one
    (not load a second state next to it, which would serve the subscription twice on one
    node and leave the first consumer's state without resends)."""

    async def scenario() -> None:
        engine = StoreEngine(tmp_path / "store", flush_interval=0.05)
        engine.open()
        engine.start()
        store = InProcessStore(StoreService(engine))
        node = NodeAddress(1, "127.0.0.1", 1, "127.0.0.1", 0)
        service = SubscriptionService(
            store, SingleNodeMembership(node), None, frozenset(), node  # type: ignore[arg-type]
        )
        shard = 7
        record = SubscriptionRecord("sub", "s", 2, 100, 0, 0, {shard: 1})
        await store.MetaPut(Store_pb2.MetaPutReq(
            key=subscription_key("sub"), value=record.to_json(), expected_version=0))
        idle = await service._open("sub")
        await store.MetaPut(Store_pb2.MetaPutReq(
            key=checkpoint_key("sub", shard), expected_version=0,
            value=json.dumps({"lsn": 5, "index": 0}).encode()))
        opened: list[Any] = []
        try:
            first = asyncio.create_task(service._open("sub"))
            await asyncio.sleep(0)  # the first one reads the store first
            _late_caller.set(True)
            second = asyncio.create_task(service._open("sub"))
            _late_caller.set(False)
            first.add_done_callback(lambda _: store.released.set())
            opened = list(await asyncio.gather(first, second))
            a, b = opened
            assert idle.closed, "the idle state behind the stored checkpoint was kept"
            assert a is b, "two consumers arriving together got two delivery states"
            assert service._deliveries["sub"] is a and not a.closed
            assert a.checkpoints() == {shard: Position(5, 0)}, "not loaded from the store"
        finally:
            await service.stop()
            for state in opened:
                await state.close()
            await engine.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
