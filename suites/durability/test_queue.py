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
from pathlib import Path

import pytest

from harness.checkers import queue
from harness.checkers.result import Result
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

from ..membership.bounds import agreement_bound_s
from .queue_workload import QueueWorkload, subscription_owner, wait_for
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
            work.drain(DRAIN_S)
            nemesis.teardown()
        work.final_read()

    result = judged(history, evidence)
    assert resumed, (
        f"no new record was delivered within {window + 20:.0f} s of killing node {owner}, "
        f"the subscription's owner; errors: {work.errors}; history {path}"
    )
    assert_valid(result, path)


@pytest.mark.nemesis
def test_queue_through_a_store_kill(request, cluster, evidence):
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
            kill = FAULTS["kill-store"].on()
            resumed = True
            for _ in range(STORE_KILLS):
                assert work.next_append_answered(10), (
                    f"no append was acknowledged within 10 s before a store kill; "
                    f"errors: {work.errors}; history {path}"
                )
                assert nemesis.invoke(kill, "start") is not None
                time.sleep(STORE_DOWN_S)
                restarted = nemesis.invoke(kill, "stop")
                assert restarted is not None
                # Appends acknowledged after the restart must reach the consumers.
                resumed = resumed and wait_for(
                    lambda at=restarted.index: bool(work.delivered(after=at)
                                                    - work.delivered(upto=at)),
                    30,
                )
            time.sleep(COOLDOWN_S)
        finally:
            work.drain(DRAIN_S)
            nemesis.teardown()
        work.final_read()

    result = judged(history, evidence)
    assert resumed, (
        f"no new record was delivered within 30 s of restarting the store; "
        f"errors: {work.errors}; history {path}"
    )
    assert_valid(result, path)


def test_queue_through_slow_consumers(request, cluster, evidence):
    endpoints = [str(n.client) for n in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    with History(path) as history:
        work = QueueWorkload(endpoints, history, max_unacked=SLOW_MAX_UNACKED)
        work.setup()
        work.start()
        try:
            assert wait_for(lambda: len(work.delivered()) >= 50, WARMUP_S + 20), (
                f"fewer than 50 records delivered before the pause; errors: {work.errors}; "
                f"history {path}"
            )
            work.pause_consumers(PAUSE_S)
            time.sleep(COOLDOWN_S)
        finally:
            work.drain(DRAIN_S)
        work.final_read()

    assert_valid(judged(history, evidence), path)


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
