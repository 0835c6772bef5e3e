"""Faults aimed at roles: the node that owns what the workload is using, asked of the cluster
at the moment of the fault (harness.nemesis.roles), and runs that say what they reached.

A kill "of one node" drawn at random often lands on a node that owns nothing the workload
uses, and then the run passes vacuously. Here the subscription's owner is killed while
records it delivered are unacknowledged: the node that takes the subscription over must
send them again from the stored checkpoint. The same property under a kill fixed to a node
that is not the owner is the control: it cannot see a defect of the takeover, and says so
(its reachability for the owner is vacuous by construction).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from harness.checkers import CheckOptions, check_all, reach
from harness.clients.driver import ClientDriver, raw_payload
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, FaultInstance, Nemesis
from harness.nemesis.roles import Resolver

from ..membership.bounds import agreement_bound_s
from .test_durability import judge
from .workload import FAST_GOSSIP, Workload

ACK_TIMEOUT_S = 3
BATCHES, BATCH = 8, 5
# Deadlines, each with room for a loaded 2-core machine.
DELIVERY_DEADLINE_S = 20.0  # the first delivery of every record
CHECKPOINT_SETTLE_S = 1.5  # the owner's checkpoint loop writes what it has (it runs at once)
AFTER_TAKEOVER_S = ACK_TIMEOUT_S + 4.0  # fetching on after the owner is confirmed gone
DRAIN_DEADLINE_S = 30.0
# What the owner test must reach: the owner, while records it sent were unacknowledged.
OWNER_REACHED = ("subscription-owner", "unacked-delivery")


def _deliver_unacked(history: History, endpoints: list[str], stream: str, sub: str,
                     consumer: ClientDriver) -> set[str]:
    with ClientDriver("raw", history=history, process="setup") as setup:
        assert setup.connect(endpoints).ok, "raw driver could not connect for setup"
        assert setup.simple("create_stream", stream=stream, shards=2).ok
        assert setup.subscribe(sub, stream, ack_timeout=ACK_TIMEOUT_S).ok
        for b in range(BATCHES):
            reply = setup.append(stream, [raw_payload(f"r-{b}-{i}") for i in range(BATCH)],
                                 key=f"k{b}")
            assert reply.ok, f"append: {reply.error}"
    appended = {f"r-{b}-{i}" for b in range(BATCHES) for i in range(BATCH)}
    assert consumer.connect(endpoints).ok
    got: set[str] = set()
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while got != appended and time.monotonic() < deadline:
        # Delivered and left unacknowledged: in flight at the owner when the fault comes.
        reply = consumer.fetch(sub, "c1", max=100, timeout_ms=1000, ack=False)
        assert reply.ok, reply.error
        got |= {r["payload_id"] for r in reply.value["records"]}
    assert got == appended, f"only {len(got)} of {len(appended)} records delivered in time"
    time.sleep(CHECKPOINT_SETTLE_S)
    return appended


def _fetch_until(history: History, consumer: ClientDriver, sub: str, wanted: set[str],
                 seconds: float) -> set[str]:
    """Fetch (and ack) as c1 for `seconds` or until every wanted payload came again;
    reconnect when the stream breaks, as an application does."""
    got: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not wanted <= got:
        reply = consumer.fetch(sub, "c1", max=100, timeout_ms=500, ack=True)
        if reply.ok:
            got |= {r["payload_id"] for r in reply.value["records"]}
        else:
            consumer.call("stop_consumer", subscription=sub, consumer="c1")
            time.sleep(0.3)  # a failing consumer is not allowed to spin
    return got


def _kill_during_delivery(request, cluster_factory, evidence,
                          aim: Callable[[Resolver, str], FaultInstance]) -> History:
    """Deliver every record unacked, kill the node `aim` chooses, then fetch on and drain:
    every record must be delivered again (the subscription checker's not_redelivered)."""
    cluster = cluster_factory(gossip=FAST_GOSSIP)
    endpoints = [str(n.client) for n in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    stream, sub = f"role_{uuid.uuid4().hex[:8]}", f"rolesub_{uuid.uuid4().hex[:8]}"
    window = agreement_bound_s(cluster.settings, len(cluster.nodes))
    with History(path) as history:
        consumer = ClientDriver("raw", history=history, process="consumer", timeout=20)
        nemesis = Nemesis(cluster, history)
        try:
            appended = _deliver_unacked(history, endpoints, stream, sub, consumer)
            instance = aim(nemesis.aimer.resolver, sub)
            nemesis.invoke(instance, "start")
            again = _fetch_until(history, consumer, sub, appended, window + AFTER_TAKEOVER_S)
            nemesis.invoke(instance, "stop")
            nemesis.heal()
            drain = history.invoke("drain", "drain", {"subscription": sub})
            again |= _fetch_until(history, consumer, sub, appended - again, DRAIN_DEADLINE_S)
            history.ok(drain)
        finally:
            consumer.close()
            nemesis.teardown()
        report = check_all(history, CheckOptions(checkers=["subscription"],
                                                 ack_timeout_s=ACK_TIMEOUT_S))
        result = report.results["subscription"]
        evidence.result("subscription", result)
        missing = sorted(appended - again)
        assert result.valid is True and not missing, (
            f"{result.summary()}; {len(missing)} records delivered and not acknowledged before "
            f"the kill never came again (e.g. {missing[:5]}); history {path}"
        )
    return history


@pytest.mark.nemesis
def test_unacked_redelivered_after_the_subscription_owner_is_killed(
    request, cluster_factory, evidence
):
    """The kill is aimed at whoever owns the subscription when it starts (LookupSubscription)."""
    history = _kill_during_delivery(
        request, cluster_factory, evidence,
        lambda resolver, sub: Fault("kill").aim(f"subscription-owner:{sub}"),
    )
    [start] = [op for op in history if op.is_nemesis and op.type == "invoke"
               and op.value.get("action") == "start"]
    assert start.value["aim"]["call"].startswith("LookupSubscription("), start.value["aim"]
    reach.require_reached(history, OWNER_REACHED, evidence)


@pytest.mark.nemesis
def test_unacked_redelivered_after_another_node_is_killed(request, cluster_factory, evidence):
    """The control: kill-one as before, fixed to a node that does not own the subscription.
    The owner lives and resends from memory, so this passes whatever the takeover does."""

    def not_the_owner(resolver: Resolver, sub: str) -> FaultInstance:
        owner = resolver.resolve(f"subscription-owner:{sub}").nodes[0]
        ids = sorted(int(n.id) for n in resolver.cluster.nodes)
        return FAULTS["kill-one"].on(next(n for n in ids if n != owner))

    history = _kill_during_delivery(request, cluster_factory, evidence, not_the_owner)
    # By construction this kill missed the owner: for the owner's property it is vacuous.
    assert reach.check(history, OWNER_REACHED).valid == "vacuous"


@pytest.mark.nemesis
def test_no_acknowledged_record_lost_when_the_shard_owner_is_cut_off(
    request, cluster_factory, evidence
):
    """A partition isolating the owner of the shard a key goes to, during the durability
    workload; it must have reached that owner with appends in flight."""
    cluster = cluster_factory(gossip=FAST_GOSSIP)
    reason = cluster.refusal("partition")
    if reason:
        pytest.skip(f"partition-isolate-one needs partition: {reason}")
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        window = agreement_bound_s(cluster.settings, len(cluster.nodes))
        workload = Workload([str(n.client) for n in cluster.nodes], history,
                            duration_s=max(10.0, 2.0 + window + 1.0 + 3.0))
        aimed = Fault("partition", grudge="isolate-one").aim(
            f"shard-owner:{workload.stream}/key=key-0")
        try:
            workload.run(
                start_fault=lambda: nemesis.invoke(aimed, "start"),
                stop_fault=lambda: nemesis.invoke(aimed, "stop"),
                heal=nemesis.heal,
            )
        finally:
            nemesis.teardown()
        judge(history, evidence, workload)
        reach.require_reached(history, ("shard-owner", "in-flight-append"), evidence)
