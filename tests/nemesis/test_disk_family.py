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
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness.cluster import Cluster, UnsupportedFault
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis, generate_schedule
from refserver.protos import Store_pb2, Store_pb2_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(nodes=1, backend="local", target="reference", defects=(),
                        disk_faults=True),
]

FSYNC_DELAY_MS = 400
# One append on an idle store without faults: well under the delay asked of fsync.
PLAIN_APPEND_BOUND_S = FSYNC_DELAY_MS / 1000
# What a loaded 2-core machine may add on top of the delay.
DELAY_SLACK_S = 3.0
APPEND_TIMEOUT_S = 20.0
LOG_ID = 4242


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


def store_append(cluster: Cluster, payload: bytes) -> float:
    """One durable Append straight to the store; returns how long it took."""
    assert cluster.provision is not None
    at = cluster.provision.placements["store"].direct(cluster.spec.store_port)
    with grpc.insecure_channel(str(at)) as channel:
        stub = Store_pb2_grpc.StoreStub(channel)
        began = time.monotonic()
        stub.Append(Store_pb2.AppendReq(log_id=LOG_ID, payload=payload, durable=True),
                    timeout=APPEND_TIMEOUT_S)
        return time.monotonic() - began


def store_data_dir(cluster: Cluster) -> Path:
    assert cluster.provision is not None
    return Path(cluster.provision.placements["store"].volumes["store-data"])


def nemesis_ops(nemesis: Nemesis) -> list:  # type: ignore[type-arg]
    assert nemesis.history is not None
    return [op for op in nemesis.history.snapshot() if op.process == "nemesis"]


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


def test_disk_latency_slows_the_store_s_appends(cluster: Cluster, nemesis: Nemesis) -> None:
    plain = min(store_append(cluster, b"plain") for _ in range(3))
    slow_fault = Fault("disk-latency", attributes={"fsync_ms": FSYNC_DELAY_MS}).on()
    nemesis.invoke(slow_fault, "start")
    slow = store_append(cluster, b"slow")
    nemesis.invoke(slow_fault, "stop")
    after = min(store_append(cluster, b"after") for _ in range(3))
    assert plain < PLAIN_APPEND_BOUND_S, plain
    assert FSYNC_DELAY_MS / 1000 <= slow < FSYNC_DELAY_MS / 1000 + DELAY_SLACK_S, slow
    assert after < PLAIN_APPEND_BOUND_S, after
    started, stopped = [op for op in nemesis_ops(nemesis) if op.type == "ok"]
    assert started.value["disk"]["faults"] == {"fsync": {"latency_ms": FSYNC_DELAY_MS}}
    assert stopped.value["disk"]["faults"] == {}
    assert stopped.value["disk"]["delayed_ms"]["fsync"] >= FSYNC_DELAY_MS


def test_disk_eio_fails_the_store_s_appends_until_it_stops(
    cluster: Cluster, nemesis: Nemesis
) -> None:
    store_append(cluster, b"before")
    eio = FAULTS["disk-eio"].on()
    nemesis.invoke(eio, "start")
    with pytest.raises(grpc.RpcError) as raised:
        store_append(cluster, b"during")
    assert "disk I/O error" in str(raised.value.details()), raised.value.details()
    nemesis.invoke(eio, "stop")
    store_append(cluster, b"after")  # the store recovers once its disk does
    stopped = [op for op in nemesis_ops(nemesis) if op.type == "ok"][-1]
    failed = stopped.value["disk"]["failed"]
    assert failed.get("write", 0) + failed.get("fsync", 0) >= 1, failed


def test_teardown_clears_io_faults_and_restarts_a_dead_store(
    cluster: Cluster, nemesis: Nemesis
) -> None:
    nemesis.invoke(FAULTS["disk-enospc"].on(), "start")
    assert cluster.disk_control().status()["faults"]["write"]["errno"] == 28
    # A crash that died half way leaves the store down: teardown must restart it.
    nemesis.families.family_for("crash-lose-unsynced").invoke(
        nemesis.ctx, FAULTS["crash-lose-unsynced"].on(), "kill")
    nemesis.teardown()
    status = cluster.disk_control().status()
    assert all(not f["errno"] and not f["latency_ms"] for f in status["faults"].values())
    store_append(cluster, b"after heal")
    heal = nemesis_ops(nemesis)[-1]
    assert heal.f == "heal" and heal.type == "ok"
    assert heal.value["disk"]["faults"] == {}


def test_a_generated_schedule_plays_the_disk_package(cluster: Cluster, nemesis: Nemesis) -> None:
    schedule = generate_schedule(11, [1], "disk", duration_s=4.0, fault_s=(0.3, 0.6),
                                 heal_s=(0.2, 0.4))
    started = [s.fault for s in schedule if s.action == "start" and s.fault is not None]
    assert started and {f.fault.kind for f in started} <= {
        "crash-lose-unsynced", "disk-latency", "disk-errno"}
    nemesis.run(schedule)
    ops = [op for op in nemesis_ops(nemesis) if op.type == "ok"]
    assert ops[-1].f == "heal"
    store_append(cluster, b"after the schedule")
    status = cluster.disk_control().status()
    assert all(not f["errno"] and not f["latency_ms"] for f in status["faults"].values())


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
