"""No acknowledged record is lost when the store's disk loses what was not fsynced or fails.

The store's data directory is a lazy disk (harness.lazydisk): file data stays in memory
until fsync. Producers append and are acknowledged; then the store crashes the way a power
loss crashes it (`crash-lose-unsynced`: kill -9, every unsynced write dropped, restart), and
a final read of every shard must still hold every acknowledged append (the stream-set
checker over the recorded history). A kill -9 alone (`kill-store`) keeps the page cache, so
it cannot tell a store that fsyncs from one that only writes: the same check under it is the
control that misses the `fsync-lie` defect. Under `disk-eio` the store's writes fail: the
store must say so (appends fail, none acknowledged meanwhile) and lose nothing it acked.
"""

from __future__ import annotations

import itertools
import time

import pytest

from harness.checkers import CheckOptions, check_all
from harness.clients.driver import ClientDriver, raw_payload
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

from .workload import FAST_GOSSIP, KEYS

SHARDS = 2
BATCH = 5
# Appends before the fault (all acknowledged on a healthy cluster) and after it.
BATCHES_BEFORE = 20
BATCHES_AFTER = 5
# Appends tried while the store's writes fail: enough that a store ignoring EIO would ack some.
BATCHES_DURING_EIO = 5
# How long one append may wait: a store that cannot write answers with an error well within.
APPEND_TIMEOUT_S = 30
# After the fault stops, the first appends may still meet the store's recovery (a restarted
# store, and a node's channel to it backing off before it reconnects): appends are retried,
# RECOVERY_PAUSE_S apart, until one is acknowledged or RECOVERY_DEADLINE_S has passed. A count
# of tries with no pause ran out in 70 ms, before a node had reconnected.
RECOVERY_DEADLINE_S = 30.0
RECOVERY_PAUSE_S = 0.25


class Appender:
    """One raw-gRPC producer and the history's view of what it appended."""

    def __init__(self, cluster, history: History) -> None:
        self.endpoints = [str(n.client) for n in cluster.nodes]
        self.history = history
        self.stream = f"disk_{cluster.spec.label[-6:]}_{cluster.spec.seed}"
        self.ids = itertools.count()
        self.driver = ClientDriver("raw", history=history, process="producer",
                                   timeout=APPEND_TIMEOUT_S)
        assert self.driver.connect(self.endpoints).ok, "the producer could not connect"
        created = self.driver.simple("create_stream", stream=self.stream, shards=SHARDS)
        assert created.ok, f"create_stream: {created.error}"
        shards = self.driver.call("list_shards", stream=self.stream)
        assert shards.ok, f"list_shards: {shards.error}"
        self.shards = [s["shard_id"] for s in shards.value["shards"]]

    def append(self, batches: int) -> list[bool]:
        outcomes = []
        for n in range(batches):
            records = [raw_payload(f"disk-{next(self.ids)}") for _ in range(BATCH)]
            outcomes.append(self.driver.append(self.stream, records, key=KEYS[n % len(KEYS)]).ok)
        return outcomes

    def append_until_ok(self) -> bool:
        """Whether the cluster acknowledges an append again within RECOVERY_DEADLINE_S."""
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while not all(self.append(1)):
            if time.monotonic() > deadline:
                return False
            time.sleep(RECOVERY_PAUSE_S)
        return True

    def final_read(self) -> None:
        """Every shard read from the earliest offset: what the store holds now."""
        reader = ClientDriver("raw", history=self.history, process="final-read", timeout=30)
        try:
            assert reader.connect(self.endpoints).ok, "the final reader could not connect"
            for shard in self.shards:
                reader.read_shard(self.stream, shard, final=True)
        finally:
            reader.close()

    def close(self) -> None:
        self.driver.close()


def judge(history: History, evidence) -> None:
    report = check_all(history, CheckOptions(checkers=["stream-set"]))
    result = dict(report.results)["stream-set"]
    evidence.result("stream-set", result)
    acked = sum(1 for op in history if op.f == "append" and op.type == "ok")
    assert acked > 0, "no append was acknowledged at all"
    assert result.valid is True, f"{result.summary()}; history {history.path}"


def crash_and_read_back(request, cluster, evidence, fault: str) -> None:
    """Acked appends, the fault on the store, appends after it, a final read, the checker."""
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        appender = Appender(cluster, history)
        try:
            before = appender.append(BATCHES_BEFORE)
            assert all(before), "appends failed before any fault"
            nemesis.invoke(FAULTS[fault].on(), "start")
            nemesis.invoke(FAULTS[fault].on(), "stop")
            recovered = appender.append_until_ok()
            appender.append(BATCHES_AFTER)
            appender.final_read()
        finally:
            appender.close()
            nemesis.teardown()
        judge(history, evidence)
        assert recovered, (
            f"no append acknowledged within {RECOVERY_DEADLINE_S:.0f} s after {fault}")


@pytest.mark.nemesis
def test_acked_appends_survive_a_crash_that_loses_unsynced_writes(
    request, cluster_factory, evidence
):
    cluster = cluster_factory(gossip=FAST_GOSSIP, disk_faults=True)
    reason = cluster.refusal("disk")
    if reason:
        pytest.skip(reason)
    crash_and_read_back(request, cluster, evidence, "crash-lose-unsynced")


@pytest.mark.nemesis
def test_acked_appends_survive_a_store_kill(request, cluster_factory, evidence):
    """The control: the same property under kill -9 of the store, the fault we had."""
    cluster = cluster_factory(gossip=FAST_GOSSIP)
    crash_and_read_back(request, cluster, evidence, "kill-store")


@pytest.mark.nemesis
def test_store_write_errors_fail_appends_and_lose_nothing_acked(
    request, cluster_factory, evidence
):
    cluster = cluster_factory(gossip=FAST_GOSSIP, disk_faults=True)
    reason = cluster.refusal("disk")
    if reason:
        pytest.skip(reason)
    path = history_path(request.node.nodeid)
    evidence.history(path)
    eio = FAULTS["disk-eio"].on()
    with History(path) as history:
        nemesis = Nemesis(cluster, history)
        appender = Appender(cluster, history)
        try:
            assert all(appender.append(BATCHES_BEFORE)), "appends failed before any fault"
            nemesis.invoke(eio, "start")
            during = appender.append(BATCHES_DURING_EIO)
            failed = cluster.disk_control().status()["failed"]
            nemesis.invoke(eio, "stop")
            recovered = appender.append_until_ok()
            appender.append(BATCHES_AFTER)
            appender.final_read()
        finally:
            appender.close()
            nemesis.teardown()
        # The store met the errors (the disk counted them) and said so: not one append
        # was acknowledged while its writes failed.
        assert failed.get("write", 0) + failed.get("fsync", 0) > 0, failed
        assert not any(during), f"appends acknowledged while every store write failed: {during}"
        judge(history, evidence)
        assert recovered, (
        f"no append acknowledged within {RECOVERY_DEADLINE_S:.0f} s after the EIO stopped")
