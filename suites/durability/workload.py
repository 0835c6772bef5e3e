"""The durability workload: producers and a consumer run while a fault comes and goes.

Two producers (the official Python client and the raw gRPC baseline, each its own driver
process) append small keyed batches to one stream; a raw consumer fetches and acks from a
subscription. A nemesis thread starts the fault after a warm-up and stops it before the end.
Then everything is healed and drained: every shard read from EARLIEST (the final read) and
the subscription fetched until it has delivered every acknowledged append. The history
holds all of it, for the stream-set, order and subscription checkers.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.clients.driver import ClientDriver, DriverError, raw_payload
from harness.history import History

KEYS = [f"key-{i}" for i in range(8)]
CONSUMER = "c1"


@dataclass
class Workload:
    endpoints: list[str]
    history: History
    duration_s: float = 10.0
    warmup_s: float = 2.0
    cooldown_s: float = 3.0
    batch: int = 5
    producers: tuple[str, ...] = ("python", "raw")
    ack_timeout_s: int = 3
    fetch_timeout_ms: int = 500
    stream: str = field(default_factory=lambda: f"dur_{uuid.uuid4().hex[:10]}")
    subscription: str = field(default_factory=lambda: f"dursub_{uuid.uuid4().hex[:10]}")
    errors: list[str] = field(default_factory=list)

    def run(
        self,
        start_fault: Callable[[], None],
        stop_fault: Callable[[], None],
        heal: Callable[[], None],
    ) -> None:
        setup = ClientDriver("raw", history=self.history, process="setup")
        try:
            assert setup.connect(self.endpoints).ok, "raw driver could not connect for setup"
            created = setup.simple("create_stream", stream=self.stream, shards=4)
            assert created.ok, f"create_stream: {created.error}"
            subscribed = setup.subscribe(self.subscription, self.stream, self.ack_timeout_s)
            assert subscribed.ok, f"subscribe: {subscribed.error}"
        finally:
            setup.close()

        stop = threading.Event()
        threads = [
            threading.Thread(target=self._produce, args=(client, i, stop), daemon=True)
            for i, client in enumerate(self.producers)
        ]
        consumer = threading.Thread(target=self._consume, args=(stop,), daemon=True)
        for thread in [*threads, consumer]:
            thread.start()
        try:
            time.sleep(self.warmup_s)
            start_fault()
            time.sleep(max(0.0, self.duration_s - self.warmup_s - self.cooldown_s))
            stop_fault()
            time.sleep(self.cooldown_s)
        finally:
            stop.set()
            for thread in [*threads, consumer]:
                thread.join(timeout=60)
            heal()
        self._drain()

    def _produce(self, client: str, index: int, stop: threading.Event) -> None:
        ids = itertools.count()
        try:
            driver = ClientDriver(
                client, history=self.history, process=f"producer-{client}", timeout=20
            )
        except Exception as error:  # an unavailable driver is a setup error, not a fault
            self.errors.append(f"{client} producer did not start: {error}")
            return
        try:
            while not stop.is_set() and not driver.connect(self.endpoints).ok:
                time.sleep(0.5)
            for n in itertools.count():
                if stop.is_set():
                    break
                records = [raw_payload(f"{client}-{next(ids)}") for _ in range(self.batch)]
                reply = driver.append(self.stream, records, key=KEYS[n % len(KEYS)])
                if not reply.ok:
                    time.sleep(0.2)  # a failing client is not allowed to spin
        except DriverError as error:
            self.errors.append(f"{client} producer: {error}")
        finally:
            driver.close()

    def _consume(self, stop: threading.Event) -> None:
        """Fetch and ack as consumer `c1` until stopped; reconnect when the stream breaks.

        Like an application, the consumer keeps its name across reconnects (and the drain
        uses it too), so a record it already saw coming again is a redelivery to the same
        reader. Each stream's life is a `consume` op, completed `info` when it broke.
        """
        driver = ClientDriver("raw", history=self.history, process="consumer", timeout=20)
        life = None
        try:
            while not stop.is_set() and not driver.connect(self.endpoints).ok:
                time.sleep(0.5)
            while not stop.is_set():
                life = self.history.invoke(
                    "consumer-life",
                    "consume",
                    {"subscription": self.subscription, "consumer": CONSUMER},
                )
                broken = None
                while not stop.is_set():
                    reply = driver.fetch(
                        self.subscription, CONSUMER, max=200, timeout_ms=self.fetch_timeout_ms
                    )
                    if not reply.ok:
                        broken = reply.error or reply.type
                        break
                if broken is None:
                    self.history.ok(life)
                    life = None
                    break
                self.history.info(life, f"stream ended: {broken}")
                life = None
                driver.call("stop_consumer", subscription=self.subscription, consumer=CONSUMER)
                time.sleep(0.5)  # a failing consumer is not allowed to spin
        except DriverError as error:
            # The driver process died (or was killed, as a crashing application): its last
            # acks may still have been in its buffers.
            if life is not None:
                self.history.info(life, f"consumer process ended: {error}")
            self.errors.append(f"consumer: {error}")
        finally:
            driver.close()

    def _drain(self) -> None:
        """The final read of every shard, then fetch until every acked record was delivered.

        At least one fetch is always made after the drain marker, and delivery is compared
        as sets of payload ids (a count would let recovered appends, indeterminate but
        delivered, stand in for acknowledged ones).
        """
        drainer = ClientDriver("raw", history=self.history, process="drain", timeout=30)
        try:
            deadline = time.monotonic() + 30
            while not drainer.connect(self.endpoints).ok:
                if time.monotonic() > deadline:
                    raise AssertionError("no node answered for the final drain within 30 s")
                time.sleep(1)
            shards = drainer.call("list_shards", stream=self.stream)
            assert shards.ok, f"list_shards for the drain: {shards.error}"
            for shard in shards.value["shards"]:
                read = drainer.read_shard(self.stream, shard["shard_id"], final=True)
                assert read.ok, f"final read of shard {shard['shard_id']}: {read.error}"
            acked = {
                op.value["payload_id"]
                for op in self.history
                if op.f == "append" and op.type == "ok"
            }
            delivered = {
                r["payload_id"]
                for op in self.history
                if op.f == "fetch" and op.type == "ok"
                for r in op.value.get("records", [])
            }
            deadline += 30
            # The drain op marks where the subscription's drain began: every append acked
            # before it must be delivered by the end (the subscription checker's cut-off).
            drain = self.history.invoke("drain", "drain", {"subscription": self.subscription})
            while True:
                reply = drainer.fetch(self.subscription, CONSUMER, max=1000, timeout_ms=2000)
                if reply.ok:
                    delivered.update(r["payload_id"] for r in reply.value["records"])
                if acked <= delivered or time.monotonic() > deadline:
                    break
            self.history.ok(drain)
        finally:
            drainer.close()


# Gossip timings for the durability clusters: faults are detected in about a second, so a
# test spends its time on the workload, not on waiting for membership.
FAST_GOSSIP = {
    "probe_interval_ms": 300,
    "roundtrip_timeout_ms": 120,
    "gossip_interval_ms": 150,
    "suspicion_mult": 3,
    "reconnect_interval_ms": 1000,
}
