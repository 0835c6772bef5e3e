"""Every anomaly kind of the queue checker, found on a real reference cluster started with
the seeded defect that causes it, and on no healthy run.

Each run starts a store and one refserver node, runs the queue workload of the durability
suite (suites/durability/queue_workload.py: a producer, two raw-driver consumers that hold
one record in seven unacked until it is resent, a drain and a final read of every shard)
and judges the history with harness.checkers.queue under the at-least-once promise. The
consumers pause once after a warm-up and the subscription's maxUnackedRecords is small, so
the server's flow control holds batches back on every run; the `kill-store` runs kill -9
the store mid-run and start it again.

A defect's run must show anomalies of its kind (it may show others: a record the store lost
is also jumped over by the final read); the healthy runs, with and without the store kill,
must show none of any kind.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from refcluster_launcher import RefCluster, launch

from harness.checkers import queue
from harness.checkers.result import Result
from harness.clients.driver import wait_until
from harness.history import History
from suites.durability.queue_workload import QueueWorkload

pytestmark = pytest.mark.slow

# Above the about 30 records the held ones keep unacked, so the consumers keep up with the
# producer; the pause fills it, and flow control then stops the sending of store reads that
# returned the appends piled up meanwhile.
MAX_UNACKED = 40
PAUSE_S = 1.5  # under the 2 s ack timeout: a pause alone resends nothing
FIRST_DELIVERIES = 30  # records delivered before the run counts as warmed up
WARMUP_DEADLINE_S = 20.0
PRODUCE_S = 2.5  # past the 2 s ack timeout: held records are resent within the run
APPEND_DEADLINE_S = 5.0
RECOVERY_DEADLINE_S = 20.0
DRAIN_DEADLINE_S = 4.0  # a run that lost or skipped records spends all of it
# The store's flush period: with ack-on-sequence only the flush commits the appends it has
# answered, so a kill right after an answer lands in up to this long of them, uncommitted.
STORE_FLUSH_MS = 2000

# (kind, defect, fault): the defect's run must show anomalies of this kind.
CASES = [
    ("inconsistent_offsets", "renumber-resent", None),
    ("lost", "ack-on-sequence", "kill-store"),
    ("poll_skip", "skip-held-back", None),
    ("nonmonotonic_poll", "redeliver-acked", None),
    ("nonmonotonic_poll", "reorder-reads", None),
    ("duplicates", "redeliver-acked", None),
]
HEALTHY_FAULTS = [None, "kill-store"]

Run = Callable[[str | None, str | None], Result]


def kill_and_restart_store(cluster: RefCluster, work: QueueWorkload, history: History) -> None:
    """kill -9 the store right after an append was answered, then start it again; recorded
    as a nemesis op pair (a fault may move what consumers own)."""
    assert work.next_append_answered(APPEND_DEADLINE_S), (
        f"no append answered within {APPEND_DEADLINE_S} s before the store kill; "
        f"errors: {work.errors}"
    )
    kill = history.invoke("nemesis", "kill-store", {"target": "store"})
    cluster.store.kill(signal.SIGKILL)
    history.ok(kill, {"target": "store", "down": ["store"]})
    restart = history.invoke("nemesis", "kill-store", {"target": "store", "stop": True})
    cluster.store.start()
    cluster.store.wait_ready(occurrence=2)
    history.ok(restart, {"target": "store", "up": ["store"]})
    assert wait_until(lambda: bool(work.delivered(after=restart.index)), RECOVERY_DEADLINE_S), (
        f"nothing delivered within {RECOVERY_DEADLINE_S} s of the store's restart; "
        f"errors: {work.errors}; logs {cluster.logs()}"
    )


def run_queue(workdir: Path, defect: str | None, fault: str | None) -> Result:
    """One cluster, one workload run, the queue checker's verdict (at-least-once)."""
    defects = ["--defect", defect] if defect else []
    store_args = [*defects, "--flush-interval-ms", str(STORE_FLUSH_MS)]
    with launch(workdir, 1, defects, store_args=store_args) as cluster:
        with History(workdir / "history.jsonl") as history:
            work = QueueWorkload([cluster.nodes[0].url], history, max_unacked=MAX_UNACKED)
            work.setup()
            work.start()
            try:
                assert wait_until(lambda: len(work.delivered()) >= FIRST_DELIVERIES,
                                WARMUP_DEADLINE_S), (
                    f"fewer than {FIRST_DELIVERIES} records delivered within "
                    f"{WARMUP_DEADLINE_S} s; errors: {work.errors}; logs {cluster.logs()}"
                )
                work.pause_consumers(PAUSE_S)
                if fault == "kill-store":
                    time.sleep(PRODUCE_S / 2)
                    kill_and_restart_store(cluster, work, history)
                time.sleep(PRODUCE_S)
            finally:
                work.drain(DRAIN_DEADLINE_S)
            work.final_read()
    result = queue.check(history, promise="at-least-once")
    # Shown with -rP: the figures each kind's row of the table is made of.
    print(f"{defect or 'healthy'} ({fault or 'no fault'}): {counts_line(result)}; "
          f"{result.counts['deliveries']} deliveries, {result.counts['redeliveries']} "
          f"redeliveries, {result.counts['acked_appends']} acked appends")
    assert result.counts["deliveries"] > 0 and result.counts["redeliveries"] > 0, (
        f"the workload did not exercise redelivery: {result.counts}; history {history.path}"
    )
    return result


@pytest.fixture(scope="module")
def queue_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Runs the workload once per (defect, fault), shared by the kinds that judge it."""
    results: dict[tuple[str | None, str | None], Result] = {}

    def run(defect: str | None, fault: str | None) -> Result:
        key = (defect, fault)
        if key not in results:
            workdir = tmp_path_factory.mktemp(f"{defect or 'healthy'}-{fault or 'nofault'}")
            results[key] = run_queue(workdir, defect, fault)
        return results[key]

    yield run


def counts_line(result: Result) -> str:
    return ", ".join(f"{kind}={result.counts[kind]}" for kind in queue.KINDS)


@pytest.mark.parametrize(("kind", "defect", "fault"), CASES,
                         ids=[f"{k}-{d}" for k, d, _ in CASES])
def test_kind_found_with_its_defect(queue_run: Run, kind: str, defect: str,
                                    fault: str | None) -> None:
    result = queue_run(defect, fault)
    assert result.counts[kind] > 0 and result.anomalies[kind], (
        f"{defect} should cause {kind}; found {counts_line(result)} ({result.summary()})"
    )
    if kind != "duplicates":
        assert result.valid is False, f"{kind} fails at-least-once: {result.summary()}"


@pytest.mark.parametrize("fault", HEALTHY_FAULTS, ids=["no-fault", "kill-store"])
def test_healthy_run_has_no_anomaly(queue_run: Run, fault: str | None) -> None:
    result = queue_run(None, fault)
    found = {kind: result.counts[kind] for kind in queue.KINDS if result.counts[kind]}
    assert not found, f"a healthy run found {counts_line(result)}: {result.anomalies}"
    assert result.valid is True, result.summary()
