"""Fault-schedule search: Hypothesis explores schedules of appends, reads and faults.

The invariant is the stream-set's: nothing acknowledged is lost. Schedules are drawn by
`program_strategy` (harness.nemesis.generator); a failing one is shrunk by Hypothesis to its
shortest form, then one step at a time until no single step can go, each candidate played on
a fresh cluster (harness.nemesis.minimize, within MINIMIZE_BUDGET), and saved as JSON under
reports/schedules/ with how far that got ("minimized": 1-minimal, or not proven minimal and
why; the path is in the failure message); `hstream-conformance replay <file>` runs it again
on a fresh cluster. The search runs on the local backend with one shared cluster; every
example gets its own stream and ends healed.
"""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from harness import HarnessError
from harness.faults.schedule_runner import ROLES, ScheduleRunner
from harness.history import History, history_path
from harness.nemesis import Schedule, program_strategy
from harness.nemesis.minimize import MinimizeBudget, minimize, save_minimized

SEARCH_FAULTS = ["kill-one", "pause-one", "kill-store", "client-reset-peer"]
GOSSIP = {
    "probe_interval_ms": 300,
    "roundtrip_timeout_ms": 120,
    "gossip_interval_ms": 150,
    "suspicion_mult": 3,
    "reconnect_interval_ms": 1000,
}
SCHEDULES = Path("reports") / "schedules"
# Each try of the step-by-step shrinking starts a fresh cluster and plays the candidate
# (about 13 s locally): 36 tries fit in 7 minutes. A lost record depends on where the kill
# lands, so each candidate gets up to MINIMIZE_ATTEMPTS runs to fail again.
MINIMIZE_BUDGET = MinimizeBudget(seconds=420, tries=36)
MINIMIZE_ATTEMPTS = 3


def _search_spec(cluster_spec):
    backend = "local" if cluster_spec.target_kind == "reference" else cluster_spec.backend
    return cluster_spec.with_(backend=backend, gossip=GOSSIP)


@pytest.fixture(scope="module")
def search_cluster(request, cluster_spec):
    """Local processes with fast gossip where the target runs locally, so a schedule takes
    seconds; started like every cluster of the run (its worker's port block, its teardown)."""
    from harness.plugin import start_run_cluster, stop_run_cluster

    cluster = start_run_cluster(request.config, _search_spec(cluster_spec))
    yield cluster
    stop_run_cluster(request.config, cluster)


def _fails_on_a_fresh_cluster(request, cluster_spec, node_id: str, tries, schedule) -> bool:
    """Play `schedule` on a cluster of its own: does it still lose acknowledged records?"""
    from harness.plugin import start_run_cluster, stop_run_cluster

    cluster = start_run_cluster(request.config, _search_spec(cluster_spec))
    history = History(history_path(f"{node_id}-minimize-{next(tries)}"))
    try:
        runner = ScheduleRunner(cluster, history)
        try:
            runner.play(schedule)
        finally:
            result = runner.finish()
        return result.valid is False
    except HarnessError:
        return False  # a run that broke is not the failure being shrunk
    finally:
        history.close()
        stop_run_cluster(request.config, cluster)


def test_no_schedule_loses_acknowledged_records(request, search_cluster, cluster_spec):
    node_id = request.node.nodeid.split("::")[-1]
    spec = search_cluster.spec
    replay_as = {
        "nodes": spec.nodes,
        "backend": "local",
        "defects": list(spec.defects),
        "gossip": GOSSIP,
        "seed": spec.seed,
    }
    nodes = [n.id for n in search_cluster.nodes]
    examples = itertools.count()
    # Hypothesis replays the shrunk example once more at the end; against a live cluster that
    # replay may pass (a race lost), so the file keeps the shortest schedule that did fail.
    shortest: list[int] = []

    @settings(
        settings.default,
        # the profile's budget (dev/ci: 25 schedules of up to 8 moves, a few seconds each)
        max_examples=settings.default.max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(program_strategy(nodes, SEARCH_FAULTS, max_steps=8, cluster=replay_as,
                            roles=ROLES))
    def search(schedule: Schedule) -> None:
        history = History(history_path(f"{node_id}-example-{next(examples)}"))
        runner = ScheduleRunner(search_cluster, history)
        try:
            runner.play(schedule)
        finally:
            result = runner.finish()  # heals and drains, also when a step failed
            history.close()
        if result.valid is not True:
            saved = SCHEDULES / f"{node_id}.json"
            if not shortest or len(schedule.steps) <= shortest[0]:
                shortest[:] = [len(schedule.steps)]
                schedule.save(saved)
            raise AssertionError(
                f"{result.summary()} after {len(schedule.steps)} steps; shortest failing "
                f"schedule saved to {saved} (replay: hstream-conformance replay {saved}); "
                f"history {history.path}\n{schedule.describe()}"
            )

    try:
        search()
    except Exception as failure:
        if not shortest:
            raise
        saved = SCHEDULES / f"{node_id}.json"
        fails = partial(_fails_on_a_fresh_cluster, request, cluster_spec, node_id,
                        itertools.count())
        minimized = minimize(Schedule.load(saved), fails, MINIMIZE_BUDGET,
                             attempts=MINIMIZE_ATTEMPTS)
        save_minimized(minimized, saved)
        failure.add_note(
            f"shrunk step by step: {minimized.summary()}; saved to {saved}\n"
            f"{minimized.schedule.describe()}"
        )
        raise
