"""Disk faults on a real 1-node reference cluster whose store runs on the lazy disk.

Each fault is measured where it lands, at the store itself (its gRPC Append, called
directly): crash-lose-unsynced kills the store and drops exactly the unsynced writes in its
data directory; disk-latency makes its appends slower by the fsync delay; disk-eio makes its
appends fail until the fault stops. The history holds each step with the disk's own word,
teardown heals, schedules play the `disk` package, and a cluster without the lazy disk
refuses in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_cases import (  # the checks every runtime shares, run here on this module's cluster
    nemesis_ops,
    store_append,
    test_a_generated_schedule_plays_the_disk_package,  # noqa: F401
    test_disk_eio_fails_the_store_s_appends_until_it_stops,  # noqa: F401
    test_disk_latency_slows_the_store_s_appends,  # noqa: F401
    test_teardown_clears_io_faults_and_restarts_a_dead_store,  # noqa: F401
)

from harness.cluster import Cluster, UnsupportedFault
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(nodes=1, backend="local", target="reference", defects=(),
                        disk_faults=True),
]


@pytest.fixture
def nemesis(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Nemesis]:
    reason = cluster.refusal("disk")
    if reason:
        pytest.skip(reason)
    history = History(history_path(request.node.nodeid))
    nemesis = Nemesis(cluster, history)
    try:
        yield nemesis
    finally:
        nemesis.teardown()
        history.close()


def store_data_dir(cluster: Cluster) -> Path:
    assert cluster.provision is not None
    return Path(cluster.provision.placements["store"].volumes["store-data"])


def test_crash_lose_unsynced_drops_exactly_the_unsynced_writes(
    cluster: Cluster, nemesis: Nemesis
) -> None:
    data = store_data_dir(cluster)
    synced, unsynced = data / "synced-by-test", data / "unsynced-by-test"
    for path, sync in ((synced, True), (unsynced, False)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"payload" * 1000)
        if sync:
            os.fsync(fd)
        os.close(fd)
    store_append(cluster, b"before")
    pid_before = cluster.processes["store"].handle.facts["pid"]  # type: ignore[union-attr]
    nemesis.invoke(FAULTS["crash-lose-unsynced"].on(), "start")
    assert cluster.processes["store"].handle.facts["pid"] != pid_before  # type: ignore[union-attr]
    assert synced.read_bytes() == b"payload" * 1000
    assert unsynced.read_bytes() == b""
    store_append(cluster, b"after")  # the restarted store serves
    ops = [op for op in nemesis_ops(nemesis) if op.type == "ok"]
    assert [op.value.get("phase") for op in ops] == ["kill", "lose-unsynced", "start"]
    lost = ops[1].value["disk"]["lost"]
    assert lost["files"] >= 1 and lost["dirty_bytes"] >= 7000, lost
    assert all(op.value["down"] == [] for op in ops)  # servers stay up


def test_a_cluster_without_the_lazy_disk_refuses_in_one_line(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    plain = cluster_factory(nodes=1, disk_faults=False, toxiproxy=False)
    reason = plain.refusal("disk")
    assert reason is not None and "disk_faults=True" in reason and "\n" not in reason
    nemesis = Nemesis(plain, None)
    with pytest.raises(UnsupportedFault, match="crash-lose-unsynced needs disk"):
        nemesis.invoke(FAULTS["crash-lose-unsynced"].on(), "start")
    assert plain.processes["store"].state == "running"  # refused before anything happened


def test_the_schedule_search_draws_disk_faults() -> None:
    """The fault search's programs (program_strategy) take the `disk` package like any other,
    and a drawn program survives its saved form (what `replay` reads)."""
    from hypothesis import find

    from harness.nemesis import Schedule, program_strategy

    def crashes(schedule: Schedule) -> bool:
        return any(step.fault is not None and step.fault.fault.kind == "crash-lose-unsynced"
                   for step in schedule.steps)

    program = find(program_strategy([1], "disk"), crashes)
    assert Schedule.from_json(program.to_json()) == program
    assert program.steps[-1].action == "heal"
