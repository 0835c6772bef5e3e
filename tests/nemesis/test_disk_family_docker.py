"""Disk faults on the docker runtime: the lazy disk in the store's container.

A 1-node reference cluster in containers with disk_faults: the lazy disk is the main process
of the store's container (the only one given /dev/fuse and CAP_SYS_ADMIN) and the store runs
beside it on the mount, started and killed by `docker exec`. Each fault is measured at the
store (its gRPC Append, called directly) and in the container: crash-lose-unsynced kills the
store, drops exactly the unsynced writes and leaves the disk's container running;
disk-latency slows the store's appends by the fsync delay; disk-eio fails them until it
stops. A generated schedule of the `disk` package plays there; a docker host without
/dev/fuse refuses in one line, and a stopped cluster leaves no container, volume or mount.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

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
from harness.images import connect
from harness.lazydisk import lazydisk_mounts
from harness.nemesis import FAULTS, Nemesis
from harness.runtimes.docker import LABEL_CLUSTER
from harness.targets import reference

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.cluster(nodes=1, backend="docker", target="reference", defects=(),
                        disk_faults=True),
]

PAYLOAD = "payload" * 1000
# Where the store's data is, inside its container (the lazy disk's mount point).
DATA_DIR = "/data/store"


@pytest.fixture
def nemesis(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Nemesis]:
    reason = cluster.refusal("disk")
    assert reason is None, f"the docker cluster refused disk faults: {reason}"
    history = History(history_path(request.node.nodeid))
    nemesis = Nemesis(cluster, history)
    try:
        yield nemesis
    finally:
        nemesis.teardown()
        history.close()


def in_store_container(cluster: Cluster, script: str) -> str:
    code, output = cluster.exec("store", ["sh", "-c", script])
    assert code == 0, f"{script!r} exited {code} in the store's container: {output}"
    return output


def write_file(cluster: Cluster, path: str, sync: bool) -> None:
    """PAYLOAD written to `path` on the store's disk, fsynced or not."""
    program = (f"import os; fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "
               f"0o644); os.write(fd, {PAYLOAD!r}.encode()); "
               f"{'os.fsync(fd); ' if sync else ''}os.close(fd)")
    in_store_container(cluster, f"python -c {shlex.quote(program)}")


def cluster_containers(label: str) -> list[Any]:
    return list(connect().containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={label}"}))


def test_only_the_store_s_container_mounts_and_the_store_runs_on_the_mount(
    cluster: Cluster
) -> None:
    containers = {c.labels["org.hstream-conformance.process"]: c
                  for c in cluster_containers(cluster.spec.label)}
    assert "disk" in containers and "store" not in containers, sorted(containers)
    for process, container in containers.items():
        host_config = container.attrs["HostConfig"]
        privileged = "SYS_ADMIN" in (host_config.get("CapAdd") or []) or any(
            d["PathOnHost"] == "/dev/fuse" for d in host_config.get("Devices") or [])
        assert privileged == (process == "disk"), (process, host_config.get("CapAdd"),
                                                   host_config.get("Devices"))
    store = cluster.processes["store"]
    assert store.handle is not None
    assert store.handle.facts["container_id"] == containers["disk"].id
    pid = store.handle.facts["pid"]
    assert "refserver.store" in in_store_container(cluster, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    mounts = in_store_container(cluster, "cat /proc/mounts")
    assert any(line.split()[1:3] == [DATA_DIR, "fuse.lazydisk"] for line in mounts.splitlines()), \
        mounts
    # The mount is the container's own: this machine sees none of it.
    assert not [point for point in lazydisk_mounts() if point.startswith(DATA_DIR)]
    store_append(cluster, b"on the lazy disk")
    # Its log is read from its file in that container (through the exec that tells a lost
    # output from an empty log) and copied here as evidence.
    assert "Store is started on port" in cluster.logs()["store"].read_text()


def test_crash_lose_unsynced_drops_exactly_the_unsynced_writes(
    cluster: Cluster, nemesis: Nemesis
) -> None:
    synced, unsynced = f"{DATA_DIR}/synced-by-test", f"{DATA_DIR}/unsynced-by-test"
    write_file(cluster, synced, sync=True)
    write_file(cluster, unsynced, sync=False)
    store_append(cluster, b"before")
    disk = connect().containers.get(cluster.processes["disk"].handle.facts["container_id"])  # type: ignore[union-attr]
    started_at = disk.attrs["State"]["StartedAt"]
    pid_before = cluster.processes["store"].handle.facts["pid"]  # type: ignore[union-attr]
    nemesis.invoke(FAULTS["crash-lose-unsynced"].on(), "start")
    assert cluster.processes["store"].handle.facts["pid"] != pid_before  # type: ignore[union-attr]
    # The lazy disk (the container's main process) lived through the store's kill.
    disk.reload()
    assert (disk.status, disk.attrs["State"]["StartedAt"]) == ("running", started_at)
    assert in_store_container(cluster, f"cat {synced}") == PAYLOAD
    assert in_store_container(cluster, f"stat -c %s {unsynced}").strip() == "0"
    store_append(cluster, b"after")  # the restarted store serves
    ops = [op for op in nemesis_ops(nemesis) if op.type == "ok"]
    assert [op.value.get("phase") for op in ops] == ["kill", "lose-unsynced", "start"]
    lost = ops[1].value["disk"]["lost"]
    assert lost["files"] >= 1 and lost["dirty_bytes"] >= len(PAYLOAD), lost
    assert all(op.value["down"] == [] for op in ops)  # servers stay up


def test_a_docker_host_without_fuse_refuses_in_one_line(
    cluster_factory, monkeypatch: pytest.MonkeyPatch, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(reference, "DOCKER_FUSE_DEVICE", str(tmp_path / "no-fuse"))
    plain = cluster_factory(backend="docker", nodes=1, disk_faults=True, toxiproxy=False)
    reason = plain.refusal("disk")
    assert reason is not None and "/dev/fuse" in reason and "\n" not in reason, reason
    with pytest.raises(UnsupportedFault, match="crash-lose-unsynced needs disk"):
        Nemesis(plain, None).invoke(FAULTS["crash-lose-unsynced"].on(), "start")
    assert "disk" not in plain.processes and plain.processes["store"].state == "running"
    # Without the lazy disk nothing is privileged.
    for container in cluster_containers(plain.spec.label):
        assert "SYS_ADMIN" not in (container.attrs["HostConfig"].get("CapAdd") or [])


def test_stop_removes_the_containers_and_leaves_no_mount(cluster: Cluster) -> None:
    """Last in this module: it stops the module's cluster (stopping again is a no-op)."""
    label = cluster.spec.label
    assert cluster_containers(label)
    cluster.stop()
    assert cluster_containers(label) == []
    assert connect().volumes.list(filters={"label": f"{LABEL_CLUSTER}={label}"}) == []
    assert not [point for point in lazydisk_mounts() if point.startswith(DATA_DIR)]
