"""No acknowledged record is lost while the cluster is hurt, whatever the fault.

For each fault the workload (workload.py) runs producers and a consumer through it, heals,
drains, and the checkers judge the history: zero lost, zero unexpected, per-shard and
per-key order kept, every acknowledged append delivered by the subscription and unacked
ones redelivered. Duplicates are reported, not failed (subscriptions are at-least-once), and
so are acked records delivered again after a fault: an ack has no answer of its own, and one
in flight when its server dies, stalls (SIGSTOP) or hands the subscription over may lose the
race with the ack deadline or the next checkpoint. That acked records are not redelivered to
a live consumer of a healthy cluster is judged by suites/api/test_subscriptions.py.
"""

from __future__ import annotations

import random

import pytest

from harness.checkers import CheckOptions, check_all, order, reach
from harness.checkers.result import Result
from harness.clients.driver import ClientDriver
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, FaultInstance, Nemesis

from ..membership.bounds import agreement_bound_s
from .workload import FAST_GOSSIP, KEYS, Workload

FAULT_NAMES = [
    "kill-one",
    "pause-one",
    "restart-one",
    "kill-minority",
    "client-latency",
    "client-reset-peer",
    "client-down",
    "gossip-down",
    "store-latency",
    "kill-store",
]


# What each fault must have reached (harness.checkers.reach), else the run is "vacuous": a
# node that owned none of the stream's shards while appends were in flight proves nothing
# about losing them (kill-minority still draws its nodes by number and may miss).
REACHED = {
    "kill-one": ("shard-owner", "in-flight-append"),
    "restart-one": ("shard-owner", "in-flight-append"),
    "kill-minority": ("shard-owner", "in-flight-append"),
    "pause-one": ("shard-owner", "in-flight-append"),
    "kill-store": ("store", "in-flight-append"),
}


# Server faults on one node that are aimed at a shard owner instead of drawn by number.
AIMED_AT_SHARD_OWNER = ("kill", "restart", "pause")


# Anomalies a fault may legitimately cause under at-least-once delivery (module docstring).
REPORTED_ONLY = {"subscription": {"acked_redelivered"}, "stream-set": {"duplicated"}}


def fails(name: str, result: Result) -> bool:
    """Not valid, for a reason other than the at-least-once anomalies reported only.

    "unknown" fails too: the drain must make every verdict decidable.
    """
    if result.valid is True:
        return False
    kinds = {kind for kind, found in result.anomalies.items() if found}
    return result.valid is not False or not kinds or bool(kinds - REPORTED_ONLY.get(name, set()))


def judge(history: History, evidence, workload: Workload) -> None:
    report = check_all(
        history,
        CheckOptions(checkers=["stream-set", "subscription"], ack_timeout_s=workload.ack_timeout_s),
    )
    results = dict(report.results)
    # Order is judged on the shard reads (the final read is the log as stored), not on the
    # subscription's deliveries: a record sent on a stream that then broke or closed comes
    # again after newer ones, and the consumer never saw the first send. Delivery order on
    # a healthy cluster is judged by suites/api/test_subscriptions.py.
    results["order"] = order.check(history, read_fs=frozenset({"read"}))
    for name, result in results.items():
        evidence.result(name, result)
    acked = sum(1 for op in history if op.f == "append" and op.type == "ok")
    summary = "; ".join(r.summary() for r in results.values())
    assert acked > 0, f"no append was acknowledged at all; errors: {workload.errors}"
    failing = [name for name, result in results.items() if fails(name, result)]
    assert not failing, f"{summary}; history {history.path}"


def minority_with(fault: Fault, role: str, nemesis: Nemesis, cluster) -> FaultInstance:
    """`fault` (a minority fault) on a minority that holds `role`'s node, the rest of it
    drawn from the seed: aiming takes one node, a minority may be more."""
    ids = [n.id for n in cluster.nodes]
    held = list(nemesis.aimer.resolver.resolve(role).nodes)[:1]
    others = [n for n in ids if n not in held]
    random.Random(cluster.spec.seed).shuffle(others)
    size = len(fault.resolve(ids, random.Random(cluster.spec.seed)).nodes)
    return fault.on(*held, *others[: max(0, size - len(held))])


@pytest.mark.nemesis
@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_no_acknowledged_record_lost(request, cluster_factory, evidence, fault):
    cluster = cluster_factory(gossip=FAST_GOSSIP)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        # The fault lasts at least until survivors agree the victim is gone (the bound of
        # what the target reports it runs with), so every failover path is exercised.
        window = agreement_bound_s(cluster.settings, len(cluster.nodes))
        workload = Workload([str(n.client) for n in cluster.nodes], history,
                            duration_s=max(10.0, 2.0 + window + 1.0 + 3.0))
        chosen = FAULTS[fault]
        # Server faults go to the owner of the shard the workload's first key goes to, as
        # the cluster answers when the fault starts: a node drawn by number may own none of
        # the shards, or only shards none of the keys hash to (the run would be vacuous).
        owner_role = f"shard-owner:{workload.stream}/key={KEYS[0]}"
        instances = []

        def start_fault() -> None:
            if chosen.target == "one" and chosen.kind in AIMED_AT_SHARD_OWNER:
                instances.append(chosen.aim(owner_role))
            elif chosen.target == "minority" and chosen.kind in AIMED_AT_SHARD_OWNER:
                instances.append(minority_with(chosen, owner_role, nemesis, cluster))
            else:
                instances.append(chosen.resolve(
                    [n.id for n in cluster.nodes], random.Random(cluster.spec.seed)))
            nemesis.invoke(instances[0], "start")

        try:
            workload.run(
                start_fault=start_fault,
                stop_fault=lambda: nemesis.invoke(instances[0], "stop"),
                heal=nemesis.heal,
            )
        finally:
            nemesis.teardown()
        judge(history, evidence, workload)
        if fault in REACHED:
            reach.require_reached(history, REACHED[fault], evidence)


@pytest.mark.nemesis
def test_consumer_crash_during_delivery(request, cluster_factory, evidence):
    """The consumer process is killed mid-stream; a new one gets everything not acked."""
    cluster = cluster_factory()
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        workload = Workload([str(n.client) for n in cluster.nodes], history, duration_s=8)

        def crash_consumer() -> None:
            # The workload's consumer is a driver process: kill -9 it like a crashing app.
            for driver in ClientDriver.running():
                if driver.process == "consumer":
                    crash = Fault("crash", program="consumer", attributes={"pid": driver.pid})
                    nemesis.invoke(crash.on(), "start")

        try:
            workload.run(start_fault=crash_consumer, stop_fault=lambda: None, heal=nemesis.heal)
        finally:
            nemesis.teardown()
        judge(history, evidence, workload)
