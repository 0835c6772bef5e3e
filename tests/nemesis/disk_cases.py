"""What the disk faults must do whatever runs the store: the checks the local and the docker
disk-family modules share (tests/nemesis/test_disk_family*.py import them, so each runs on
that module's cluster), and the store helpers they use.

Each fault is measured where it lands, at the store itself: its gRPC Append, called
directly.
"""

from __future__ import annotations

import time

import grpc
import pytest

from harness.cluster import Cluster
from harness.nemesis import FAULTS, Fault, Nemesis, generate_schedule
from refserver.protos import Store_pb2, Store_pb2_grpc

FSYNC_DELAY_MS = 400
# One append on an idle store without faults: well under the delay asked of fsync.
PLAIN_APPEND_BOUND_S = FSYNC_DELAY_MS / 1000
# What a loaded 2-core machine may add on top of the delay.
DELAY_SLACK_S = 3.0
APPEND_TIMEOUT_S = 20.0
LOG_ID = 4242


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


def nemesis_ops(nemesis: Nemesis) -> list:  # type: ignore[type-arg]
    assert nemesis.history is not None
    return [op for op in nemesis.history.snapshot() if op.process == "nemesis"]


def idle_disk(cluster: Cluster) -> bool:
    """The lazy disk reports no fault set: no errno, no latency."""
    status = cluster.disk_control().status()
    return all(not f["errno"] and not f["latency_ms"] for f in status["faults"].values())


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
    assert cluster.processes["store"].state == "killed"
    nemesis.teardown()
    assert idle_disk(cluster)
    store_append(cluster, b"after heal")
    heal = nemesis_ops(nemesis)[-1]
    assert heal.f == "heal" and heal.type == "ok"
    assert heal.value["disk"]["faults"] == {}


def test_a_generated_schedule_plays_the_disk_package(cluster: Cluster, nemesis: Nemesis) -> None:
    # Seed 11 draws a crash among its faults, so the schedule's heal must restart the store.
    schedule = generate_schedule(11, [1], "disk", duration_s=4.0, fault_s=(0.3, 0.6),
                                 heal_s=(0.2, 0.4))
    started = [s.fault for s in schedule if s.action == "start" and s.fault is not None]
    assert {f.fault.kind for f in started} <= {
        "crash-lose-unsynced", "disk-latency", "disk-errno"}
    assert "crash-lose-unsynced" in {f.fault.kind for f in started}, (
        "seed 11 drew no crash: pick a seed that does")
    nemesis.run(schedule)
    ops = [op for op in nemesis_ops(nemesis) if op.type == "ok"]
    assert ops[-1].f == "heal"
    assert "lose-unsynced" in [op.value.get("phase") for op in ops]
    store_append(cluster, b"after the schedule")
    assert idle_disk(cluster)
