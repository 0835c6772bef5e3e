"""The queue workload: one subscription read as a queue by two consumers while a producer
appends.

A producer appends keyed batches of five records to a 4-shard stream; two consumers, each
its own raw driver process, fetch from one subscription and acknowledge what they get,
except that one record in seven is acknowledged only when it comes again after the ack
timeout, so batches are resent in part. A consumer whose stream breaks records the end of
its `consume` op, stops and joins again. `drain` waits until every acknowledged append was
delivered (or its deadline passes); `final_read` reads every shard from EARLIEST;
`pause_consumers` makes both consumers slow for a while. The
history holds it all, for the queue checker (harness.checkers.queue).

Used by suites/durability/test_queue.py (faults through the nemesis) and by the reference
server's seeded-defect tests (tests/refserver), which run it on a cluster of their own.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials, wire
from harness.clients.driver import ClientDriver, DriverError, raw_payload, wait_until
from harness.history import History

CONSUMERS = ("c1", "c2")
KEYS = [f"key-{i}" for i in range(8)]
ACK_TIMEOUT_S = 2
HOLD_EVERY = 7  # payload numbers n with n % HOLD_EVERY == HOLD_AT are acked on their resend
HOLD_AT = 3
BATCH = 5
SHARDS = 4


class QueueWorkload:
    """One producer and two consumers on one subscription, each a driver process.

    `max_unacked` is the subscription's maxUnackedRecords: a small one makes the server's
    flow control hold back batches it has read, so the workload exercises that path too.
    """

    def __init__(
        self,
        endpoints: list[str],
        history: History,
        ack_timeout_s: int = ACK_TIMEOUT_S,
        max_unacked: int = 10_000,
    ) -> None:
        self.endpoints = endpoints
        self.history = history
        self.ack_timeout_s = ack_timeout_s
        self.max_unacked = max_unacked
        self.stream = f"q_{uuid.uuid4().hex[:10]}"
        self.subscription = f"qsub_{uuid.uuid4().hex[:10]}"
        self.producing = threading.Event()
        self.consuming = threading.Event()
        self.fetching = threading.Event()  # cleared while the consumers are paused
        self.fetching.set()
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    def setup(self) -> None:
        with ClientDriver("raw", history=self.history, process="setup") as setup:
            assert setup.connect(self.endpoints).ok, "raw driver could not connect for setup"
            created = setup.simple("create_stream", stream=self.stream, shards=SHARDS)
            assert created.ok, f"create_stream: {created.error}"
            subscribed = setup.subscribe(self.subscription, self.stream, self.ack_timeout_s,
                                         max_unacked=self.max_unacked)
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

    def pause_consumers(self, seconds: float) -> None:
        """Both consumers stop fetching (and so acking) for `seconds`, as slow consumers
        do: the server sends up to maxUnackedRecords and then holds back what it reads,
        and the producer's appends pile up behind them until the consumers go on."""
        self.fetching.clear()
        try:
            time.sleep(seconds)
        finally:
            self.fetching.set()

    def acknowledged(self) -> set[str]:
        return {op.value["payload_id"] for op in self.history
                if op.f == "append" and op.type == "ok"}

    def next_append_answered(self, timeout_s: float) -> bool:
        """Wait until one more append is acknowledged (a fault started right then hits a
        store with that append just answered)."""
        answered = len(self.acknowledged())
        return wait_until(lambda: len(self.acknowledged()) > answered, timeout_s, 0.005)

    def delivered(self, after: int = -1, upto: int | None = None) -> set[str]:
        """Payload ids delivered by fetches recorded after op `after` (up to op `upto`)."""
        return {r["payload_id"] for op in self.history
                if op.f == "fetch" and op.type == "ok" and op.index > after
                and (upto is None or op.index <= upto)
                for r in op.value.get("records", [])}

    def delivers_new_records_after(self, index: int, timeout_s: float) -> bool:
        """Whether, within `timeout_s`, a fetch invoked after op `index` delivers a record
        never delivered up to it: the subscription moves on after a fault, not only resends.
        By invocation, not completion: a fetch already in flight when a node is killed can
        complete after the kill with what the dead owner sent before it."""
        def moved_on() -> bool:
            invoked: dict[object, int] = {}
            later: set[str] = set()
            for op in self.history:
                if op.f != "fetch":
                    continue
                if op.type == "invoke":
                    invoked[op.process] = op.index
                elif op.type == "ok" and invoked.get(op.process, -1) > index:
                    later.update(r["payload_id"] for r in op.value.get("records", []))
            return bool(later - self.delivered(upto=index))
        return wait_until(moved_on, timeout_s)

    def drain(self, deadline_s: float) -> bool:
        """Stop producing and let the consumers fetch until every acknowledged append was
        delivered, recorded as a `drain` op; then stop them. False if `deadline_s` passed
        first (a record the subscription never delivers is the checker's to judge)."""
        self.producing.clear()
        time.sleep(0.5)  # the producer's last append completes
        drain = self.history.invoke("drain", "drain", {"subscription": self.subscription})
        drained = wait_until(lambda: self.acknowledged() <= self.delivered(), deadline_s, 0.5)
        self.history.ok(drain)
        self.stop()
        return drained

    def final_read(self, connect_s: float = 30) -> None:
        """Every shard read from EARLIEST by a fresh reader (`final`)."""
        with ClientDriver("raw", history=self.history, process="final-read",
                          timeout=30) as reader:
            assert wait_until(lambda: reader.connect(self.endpoints).ok, connect_s, 1.0), (
                f"the final reader could not connect within {connect_s} s"
            )
            shards = reader.call("list_shards", stream=self.stream)
            assert shards.ok, f"list_shards: {shards.error}"
            for shard in shards.value["shards"]:
                read = reader.read_shard(self.stream, shard["shard_id"], final=True)
                assert read.ok, f"final read of shard {shard['shard_id']}: {read.error}"

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
                    batch = [raw_payload(f"q-{next(numbers)}") for _ in range(BATCH)]
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
                        if not self.fetching.wait(timeout=0.1):
                            continue  # paused: what the server sent waits, unacked
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

