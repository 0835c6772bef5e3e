"""Subscription ack deadlines under clock faults: a deadline is a span of time, not a time of
day, so no jump of the server's wall clock may make a record due early.

A consumer holds records unacked, well inside their ack deadline, while the node that owns
the subscription (asked with LookupSubscription) has its realtime clock bumped forward far
past every deadline (the nemesis' clock family; the cluster runs under the clock layer).
No record may come again before its deadline, and none may be lost. A server that times
deadlines on its wall clock instead of a monotonic one (the reference server's seeded
`wall-clock-deadlines`) resends every record in flight at once.

The control holds records the same way across a pause of the owner, a fault we had before:
the same property, which the wall-clock defect passes, so only the clock fault reveals it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials
from harness.clients.driver import ClientDriver, raw_payload
from harness.cluster import Cluster
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, FaultInstance, Nemesis

ACK_TIMEOUT_S = 30  # every hold below ends well before it
RECORDS = 20
BUMP_S = 120  # far past every deadline, had they been times of day
HOLD_S = 6.0  # how long records are held unacked once the fault started
PAUSE_S = 2.0  # the control's pause: short of any suspicion at the default gossip timings
DELIVERY_DEADLINE_S = 20.0  # to get every record delivered once, before the fault
# A redelivery this much before the deadline is early whatever the delivery latency was.
EARLY_MARGIN_S = 5.0


@dataclass
class Held:
    """Records delivered and held unacked: first delivery time, and any early repeats."""

    first: dict[tuple[int, ...], tuple[str, float]] = field(default_factory=dict)
    early: list[tuple[str, float]] = field(default_factory=list)  # (payload id, seconds after)

    def take(self, records: list[dict[str, Any]], asked_at: float, now: float) -> None:
        for record in records:
            key = tuple(record["record_id"])
            if key not in self.first:
                self.first[key] = (record["payload_id"], asked_at)
                continue
            payload, first_at = self.first[key]
            if now - first_at < ACK_TIMEOUT_S - EARLY_MARGIN_S:
                self.early.append((payload, now - first_at))


def owner_of(cluster: Cluster, subscription: str) -> int:
    """The node serving `subscription`, as the cluster answers LookupSubscription."""
    with credentials.channel(str(cluster.nodes[0].client)) as channel:
        stub = api_grpc.HStreamApiStub(channel)
        reply = stub.LookupSubscription(
            api.LookupSubscriptionRequest(subscriptionId=subscription), timeout=10
        )
    return int(reply.serverNode.id)


def hold_across(
    cluster: Cluster,
    path: Any,
    fault_on: Callable[[int], FaultInstance],
    stop_after_s: float,
) -> tuple[Held, int, dict[str, Any], set[str], set[str]]:
    """Deliver RECORDS records, hold them unacked across the fault on the subscription's
    owner (stopped `stop_after_s` into the hold), then ack them all.

    Returns what was held, the owner, the fault's start completion, and the payload ids
    appended and delivered."""
    stream, sub = f"clk_{uuid.uuid4().hex[:8]}", f"clksub_{uuid.uuid4().hex[:8]}"
    endpoints = [str(n.client) for n in cluster.nodes]
    held = Held()
    appended: set[str] = set()
    with History(path) as history, ClientDriver("raw", history=history, process="c") as client:
        assert client.connect(endpoints).ok
        assert client.simple("create_stream", stream=stream, shards=1).ok
        assert client.subscribe(sub, stream, ack_timeout=ACK_TIMEOUT_S).ok
        for i in range(RECORDS // 5):
            batch = [f"held-{i}-{j}" for j in range(5)]
            assert client.append(stream, [raw_payload(p) for p in batch], key="k").ok
            appended.update(batch)

        def fetch() -> None:
            asked_at = time.monotonic()
            reply = client.fetch(sub, "c1", max=RECORDS, timeout_ms=500, ack=False)
            assert reply.ok, reply.error
            held.take(reply.value["records"], asked_at, time.monotonic())

        deadline = time.monotonic() + DELIVERY_DEADLINE_S
        while len(held.first) < RECORDS and time.monotonic() < deadline:
            fetch()
        assert len(held.first) == RECORDS, (
            f"only {len(held.first)} of {RECORDS} records delivered within "
            f"{DELIVERY_DEADLINE_S:.0f}s, before any fault; history {path}")

        owner = owner_of(cluster, sub)
        nemesis = Nemesis(cluster, history)
        try:
            instance = fault_on(owner)
            started = nemesis.invoke(instance, "start")
            began, stopped = time.monotonic(), False
            while time.monotonic() - began < HOLD_S:
                if not stopped and time.monotonic() - began >= stop_after_s:
                    nemesis.invoke(instance, "stop")
                    stopped = True
                fetch()
            if not stopped:
                nemesis.invoke(instance, "stop")
        finally:
            nemesis.teardown()
        ids = [list(key) for key in held.first]
        ack = history.invoke("c", "ack", {"subscription": sub, "consumer": "c1",
                                          "record_ids": ids})
        acked = client.call("ack", subscription=sub, consumer="c1", record_ids=ids)
        history.complete(ack, "ok" if acked.ok else "fail", None)
        assert acked.ok, acked.error
    delivered = {payload for payload, _ in held.first.values()}
    return held, owner, (started.value if started is not None else {}), appended, delivered


def verdict(held: Held, owner: int, what: str, start: dict[str, Any], path: Any) -> str:
    seen = start.get("clock", {}).get(str(owner), {}).get("after", {})
    clock = f" (its clock measured {seen['offset']:+.1f}s off)" if "offset" in seen else ""
    examples = ", ".join(f"{p} after {s:.1f}s" for p, s in sorted(held.early)[:5])
    return (
        f"{len(held.early)} redeliveries of {RECORDS} records held unacked came before their "
        f"ack deadline of {ACK_TIMEOUT_S}s, after {what} on the subscription owner, node "
        f"{owner}{clock}: ack deadlines follow the server's wall clock, not a monotonic one "
        f"(e.g. {examples}); history {path}")


@pytest.mark.nemesis
def test_no_redelivery_before_ack_deadline_across_clock_bump(request, cluster_factory,
                                                              evidence):
    cluster = cluster_factory(clock_faults=True)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    bump = Fault("clock", clock="bump", attributes={"delta_ms": BUMP_S * 1000})
    held, owner, start, appended, delivered = hold_across(
        cluster, path, lambda n: bump.on(n), stop_after_s=HOLD_S)
    seen = start["clock"][str(owner)]["after"]
    assert abs(seen["offset"] - BUMP_S) < 1.0, f"the bump did not take: {start}"
    assert not held.early, verdict(held, owner, f"a +{BUMP_S}s clock bump", start, path)
    assert delivered == appended, f"records never delivered: {sorted(appended - delivered)}"


@pytest.mark.nemesis
def test_no_redelivery_before_ack_deadline_across_owner_pause(request, cluster_factory,
                                                               evidence):
    """Control: the same property across a pause of the owner (a fault we had)."""
    cluster = cluster_factory()
    path = history_path(request.node.nodeid)
    evidence.history(path)
    held, owner, start, appended, delivered = hold_across(
        cluster, path, lambda n: FAULTS["pause-one"].on(n), stop_after_s=PAUSE_S)
    assert not held.early, verdict(held, owner, f"a {PAUSE_S:.0f}s pause", start, path)
    assert delivered == appended, f"records never delivered: {sorted(appended - delivered)}"
