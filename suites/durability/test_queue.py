"""The subscription as a queue (Jepsen's queue checker) while its owner is killed.

A producer appends keyed batches of five records to a 4-shard stream; two consumers, each
its own raw driver process, fetch from one subscription and acknowledge what they get,
except that one record in seven is acknowledged only when it comes again after the ack
timeout, so batches are resent in part. After a warm-up the node that owns the
subscription (as LookupSubscription names it) is killed through the nemesis: the
consumers' streams break and they join again on the new owner, which resumes from the
stored checkpoints. The killed node is started again, the producer stops, the consumers
drain the subscription, and every shard is read from EARLIEST.

The queue checker judges the history under the at-least-once promise: no record id with
two payloads, no acknowledged append passed over, no poll skip or step back within an
ownership epoch; duplicates (acknowledged records the new owner resends) are counted only.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials, wire
from harness.checkers import queue
from harness.clients.driver import ClientDriver, DriverError, raw_payload
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

from ..membership.bounds import agreement_bound_s
from .workload import FAST_GOSSIP

pytestmark = pytest.mark.cluster(gossip=FAST_GOSSIP)

CONSUMERS = ("c1", "c2")
KEYS = [f"key-{i}" for i in range(8)]
ACK_TIMEOUT_S = 2
HOLD_EVERY = 7  # payload numbers n with n % HOLD_EVERY == HOLD_AT are acked on their resend
HOLD_AT = 3
WARMUP_S = 4.0
COOLDOWN_S = 3.0
DRAIN_S = 30.0


class QueueWorkload:
    """One producer and two consumers on one subscription, each a driver process."""

    def __init__(self, endpoints: list[str], history: History) -> None:
        self.endpoints = endpoints
        self.history = history
        self.stream = f"q_{uuid.uuid4().hex[:10]}"
        self.subscription = f"qsub_{uuid.uuid4().hex[:10]}"
        self.producing = threading.Event()
        self.consuming = threading.Event()
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    def setup(self) -> None:
        with ClientDriver("raw", history=self.history, process="setup") as setup:
            assert setup.connect(self.endpoints).ok, "raw driver could not connect for setup"
            created = setup.simple("create_stream", stream=self.stream, shards=4)
            assert created.ok, f"create_stream: {created.error}"
            subscribed = setup.subscribe(self.subscription, self.stream, ACK_TIMEOUT_S)
            assert subscribed.ok, f"subscribe: {subscribed.error}"

    def start(self) -> None:
        self.producing.set()
        self.consuming.set()
        self.threads = [threading.Thread(target=self._produce, daemon=True)] + [
            threading.Thread(target=self._consume, args=(name,), daemon=True)
            for name in CONSUMERS
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.producing.clear()
        self.consuming.clear()
        for thread in self.threads:
            thread.join(timeout=60)

    def acknowledged(self) -> set[str]:
        return {op.value["payload_id"] for op in self.history
                if op.f == "append" and op.type == "ok"}

    def delivered(self, after: int = -1, upto: int | None = None) -> set[str]:
        """Payload ids delivered by fetches recorded after op `after` (up to op `upto`)."""
        return {r["payload_id"] for op in self.history
                if op.f == "fetch" and op.type == "ok" and op.index > after
                and (upto is None or op.index <= upto)
                for r in op.value.get("records", [])}

    def _produce(self) -> None:
        numbers = itertools.count()
        try:
            with ClientDriver("raw", history=self.history, process="producer",
                              timeout=20) as driver:
                while self.producing.is_set() and not driver.connect(self.endpoints).ok:
                    time.sleep(0.5)
                for n in itertools.count():
                    if not self.producing.is_set():
                        break
                    batch = [raw_payload(f"q-{next(numbers)}") for _ in range(5)]
                    reply = driver.append(self.stream, batch, key=KEYS[n % len(KEYS)])
                    time.sleep(0.05 if reply.ok else 0.3)  # bounded rate; no spinning
        except DriverError as error:
            self.errors.append(f"producer: {error}")

    def _consume(self, name: str) -> None:
        """Fetch and ack as consumer `name`; each stream's life is a `consume` op, and a
        broken one is stopped and joined again (the new owner, once lookups move)."""
        sub = self.subscription
        try:
            with ClientDriver("raw", history=self.history, process=f"consumer-{name}",
                              timeout=20) as driver:
                while self.consuming.is_set() and not driver.connect(self.endpoints).ok:
                    time.sleep(0.5)
                while self.consuming.is_set():
                    life = self.history.invoke(f"{name}-life", "consume",
                                               {"subscription": sub, "consumer": name})
                    broken = None
                    while self.consuming.is_set() and broken is None:
                        reply = driver.fetch(sub, name, max=200, timeout_ms=500, ack=False)
                        if not reply.ok:
                            broken = reply.error or reply.type
                            break
                        ids = [r["record_id"] for r in reply.value["records"]
                               if not self._hold(r["payload_id"])]
                        if ids:
                            driver.invoke("ack", {"subscription": sub, "consumer": name,
                                                  "record_ids": ids},
                                          "ack", subscription=sub, consumer=name,
                                          record_ids=ids)
                    if broken is None:
                        self.history.ok(life)
                        break
                    self.history.info(life, f"stream ended: {broken}")
                    driver.call("stop_consumer", subscription=sub, consumer=name)
                    time.sleep(0.5)  # a failing consumer is not allowed to spin
        except DriverError as error:
            self.errors.append(f"consumer {name}: {error}")

    def _hold(self, payload_id: str) -> bool:
        """Leave this record unacked the first time any consumer gets it."""
        if int(payload_id.rsplit("-", 1)[1]) % HOLD_EVERY != HOLD_AT:
            return False
        with self.lock:
            if payload_id in self.held:
                return False
            self.held.add(payload_id)
            return True


def subscription_owner(endpoint: str, subscription: str) -> str:
    with credentials.channel(endpoint) as channel:
        answer = api_grpc.HStreamApiStub(channel).LookupSubscription(
            api.LookupSubscriptionRequest(subscriptionId=subscription), timeout=10
        )
    return wire.endpoint_of(answer.serverNode)


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


@pytest.mark.nemesis
def test_queue_through_a_kill_of_the_subscription_owner(request, cluster, evidence):
    endpoints = [str(n.client) for n in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        work = QueueWorkload(endpoints, history)
        work.setup()
        nemesis = Nemesis(cluster, history)
        work.start()
        try:
            assert wait_for(lambda: len(work.delivered()) >= 50, WARMUP_S + 20), (
                f"fewer than 50 records delivered before any fault; errors: {work.errors}; "
                f"history {path}"
            )
            time.sleep(WARMUP_S)
            owner_at = subscription_owner(endpoints[0], work.subscription)
            owner = next(n.id for n in cluster.nodes if str(n.client) == owner_at)
            kill = FAULTS["kill-one"].on(owner)
            killed = nemesis.invoke(kill, "start")
            assert killed is not None
            # The consumers move once the survivors agree the owner is gone; then new
            # records must flow from the new owner before the killed node comes back.
            window = agreement_bound_s(cluster.settings, len(cluster.nodes))
            resumed = wait_for(
                lambda: bool(work.delivered(after=killed.index)
                             - work.delivered(upto=killed.index)),
                window + 20,
            )
            nemesis.invoke(kill, "stop")
            time.sleep(COOLDOWN_S)
        finally:
            work.producing.clear()
            time.sleep(0.5)
            drain = history.invoke("drain", "drain", {"subscription": work.subscription})
            wait_for(lambda: work.acknowledged() <= work.delivered(), DRAIN_S, 0.5)
            history.ok(drain)
            work.stop()
            nemesis.teardown()
        with ClientDriver("raw", history=history, process="final-read", timeout=30) as reader:
            assert wait_for(lambda: reader.connect(endpoints).ok, 30, 1.0)
            shards = reader.call("list_shards", stream=work.stream)
            assert shards.ok, f"list_shards: {shards.error}"
            for shard in shards.value["shards"]:
                read = reader.read_shard(work.stream, shard["shard_id"], final=True)
                assert read.ok, f"final read of shard {shard['shard_id']}: {read.error}"

    result = queue.check(history, promise="at-least-once")
    evidence.result(queue.NAME, result)
    evidence.figures("queue lag", {
        "unseen_max": result.figures["unseen_max"],
        "unseen_final": result.figures["unseen_final"],
    })
    assert resumed, (
        f"no new record was delivered within {window + 20:.0f} s of killing node {owner}, "
        f"the subscription's owner; errors: {work.errors}; history {path}"
    )
    assert result.counts["deliveries"] > 0 and result.counts["redeliveries"] > 0, (
        f"the workload did not exercise redelivery: {result.counts}; history {path}"
    )
    assert result.valid is True, f"{result.summary()}; history {path}"
