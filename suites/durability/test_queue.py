"""The subscription as a queue (Jepsen's queue checker) while its owner or its store is
killed, and while its consumers are slow.

The workload (queue_workload.py): a producer appends keyed batches of five records to a
4-shard stream; two consumers, each its own raw driver process, fetch from one subscription
and acknowledge what they get, except that one record in seven is acknowledged only when it
comes again after the ack timeout, so batches are resent in part. At the end the producer
stops, the consumers drain the subscription, and every shard is read from EARLIEST.

* Owner kill: after a warm-up the node that owns the subscription (as LookupSubscription
  names it) is killed through the nemesis: the consumers' streams break and they join again
  on the new owner, which resumes from the stored checkpoints. The killed node is started
  again before the drain.
* Store kills: three times the store is killed -9 right after it acknowledged an append,
  while the producer goes on, and started again; the appends it acknowledged must all be
  there, with the ones that came after.
* Slow consumers: with a small maxUnackedRecords both consumers stop fetching for a while;
  flow control holds back what the server reads meanwhile, and each consumer must then
  get its shards' records without a gap.

The queue checker judges each history under the at-least-once promise: no record id with
two payloads, no acknowledged append passed over, no poll skip or step back within an
ownership epoch; duplicates (acknowledged records the new owner resends) are counted only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.checkers import queue
from harness.checkers.result import Result
from harness.clients.driver import wait_until
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

from ..membership.bounds import agreement_bound_s
from .queue_workload import QueueWorkload, subscription_owner
from .workload import FAST_GOSSIP

pytestmark = pytest.mark.cluster(gossip=FAST_GOSSIP)

WARMUP_S = 4.0
COOLDOWN_S = 3.0
DRAIN_S = 30.0
STORE_DOWN_S = 1.0
# A store that answers before it commits loses appends only if the kill lands before its
# next commit: each kill comes right after an acknowledged append, and there are several.
STORE_KILLS = 3
# Above the about 30 records the held ones keep unacked, so the consumers keep up; a pause
# fills it, and the appends made meanwhile are read and sent under flow control.
SLOW_MAX_UNACKED = 40
PAUSE_S = 1.5  # under the ack timeout: a pause alone resends nothing


@dataclass
class QueueRun:
    work: QueueWorkload
    history: History
    path: Path
    nemesis: Nemesis | None


@contextmanager
def queue_run(request, cluster, evidence, *, faults: bool = True, settle_s: float = WARMUP_S,
              **workload: Any) -> Iterator[QueueRun]:
    """The workload set up, started and warmed up (50 records delivered, then `settle_s`);
    the body injects its fault; then the subscription is drained, faults healed and every
    shard read from EARLIEST, all into the test's history."""
    endpoints = [str(n.client) for n in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        work = QueueWorkload(endpoints, history, **workload)
        work.setup()
        nemesis = Nemesis(cluster, history) if faults else None
        work.start()
        try:
            assert wait_until(lambda: len(work.delivered()) >= 50, WARMUP_S + 20), (
                f"fewer than 50 records delivered before the fault; errors: {work.errors}; "
                f"history {path}"
            )
            time.sleep(settle_s)
            yield QueueRun(work, history, path, nemesis)
        finally:
            work.drain(DRAIN_S)
            if nemesis is not None:
                nemesis.teardown()
        work.final_read()


@pytest.mark.nemesis
def test_queue_through_a_kill_of_the_subscription_owner(request, cluster, evidence):
    with queue_run(request, cluster, evidence) as run:
        assert run.nemesis is not None
        endpoints = [str(n.client) for n in cluster.nodes]
        owner_at = subscription_owner(endpoints[0], run.work.subscription)
        owner = next(n.id for n in cluster.nodes if str(n.client) == owner_at)
        kill = FAULTS["kill-one"].on(owner)
        killed = run.nemesis.invoke(kill, "start")
        assert killed is not None
        # The consumers move once the survivors agree the owner is gone; then new
        # records must flow from the new owner before the killed node comes back.
        window = agreement_bound_s(cluster.settings, len(cluster.nodes))
        resumed = run.work.delivers_new_records_after(killed.index, window + 20)
        run.nemesis.invoke(kill, "stop")
        time.sleep(COOLDOWN_S)

    result = judged(run.history, evidence)
    assert resumed, (
        f"no new record was delivered within {window + 20:.0f} s of killing node {owner}, "
        f"the subscription's owner; errors: {run.work.errors}; history {run.path}"
    )
    assert_valid(result, run.path)


@pytest.mark.nemesis
def test_queue_through_a_store_kill(request, cluster, evidence):
    with queue_run(request, cluster, evidence) as run:
        assert run.nemesis is not None
        kill = FAULTS["kill-store"].on()
        resumed = True
        for _ in range(STORE_KILLS):
            assert run.work.next_append_answered(10), (
                f"no append was acknowledged within 10 s before a store kill; "
                f"errors: {run.work.errors}; history {run.path}"
            )
            assert run.nemesis.invoke(kill, "start") is not None
            time.sleep(STORE_DOWN_S)
            restarted = run.nemesis.invoke(kill, "stop")
            assert restarted is not None
            # Appends acknowledged after the restart must reach the consumers.
            resumed = resumed and run.work.delivers_new_records_after(restarted.index, 30)
        time.sleep(COOLDOWN_S)

    result = judged(run.history, evidence)
    assert resumed, (
        f"no new record was delivered within 30 s of restarting the store; "
        f"errors: {run.work.errors}; history {run.path}"
    )
    assert_valid(result, run.path)


def test_queue_through_slow_consumers(request, cluster, evidence):
    with queue_run(request, cluster, evidence, faults=False, settle_s=0,
                   max_unacked=SLOW_MAX_UNACKED) as run:
        run.work.pause_consumers(PAUSE_S)
        time.sleep(COOLDOWN_S)

    assert_valid(judged(run.history, evidence), run.path)


def judged(history: History, evidence) -> Result:
    """The queue checker's verdict (at-least-once), kept as evidence with the lag figures."""
    result = queue.check(history, promise="at-least-once")
    evidence.result(queue.NAME, result)
    evidence.figures("queue lag", {
        "unseen_max": result.figures["unseen_max"],
        "unseen_final": result.figures["unseen_final"],
    })
    return result


def assert_valid(result: Result, path: Path) -> None:
    assert result.counts["deliveries"] > 0 and result.counts["redeliveries"] > 0, (
        f"the workload did not exercise redelivery: {result.counts}; history {path}"
    )
    # The summary names every anomaly kind found, with its count.
    assert result.valid is True, f"{result.summary()}; history {path}"
