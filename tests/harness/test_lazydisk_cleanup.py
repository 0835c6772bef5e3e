"""A cluster on the lazy disk leaves no mount behind: not on Ctrl-C, not when its run and
its lazy disk are SIGKILLed (the sweep unmounts the dead mount), never on a plain cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_probes import subprocess_env
from test_sweep import PRELUDE, READY_S, signalled_exit, wait_for_line

from harness.cleanup import all_records, sweep
from harness.lazydisk import fuse_refusal, lazydisk_mounts
from harness.targets import reference
from harness.targets.reference import disk_refusal
from harness.topology import ClusterSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Each run takes the ports of `cluster_base_port`: the worker's own block (see test_sweep).

RUN = PRELUDE + """
import sys, time
from harness.cluster import start_cluster
from harness.topology import ClusterSpec
spec = ClusterSpec(nodes=1, base_port=int(sys.argv[1]), session=sys.argv[2], disk_faults=True)
start_cluster(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
print("READY", flush=True)
time.sleep(300)
"""


@pytest.fixture(autouse=True)
def _fuse() -> None:
    reason = fuse_refusal()
    if reason:
        pytest.skip(reason)


def start_run(port: int, session: str, reports: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = reports.parent / f"{session}.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUN, str(port), session], cwd=REPO,
            stdout=subprocess.PIPE, stderr=log, env=subprocess_env(reports))
    return runner, log_path


def mounts_of(session: str) -> list[str]:
    return [m for m in lazydisk_mounts() if session in m]


def test_a_killed_run_and_lazy_disk_leave_a_dead_mount_the_sweep_removes(
    isolated_reports: Path, labelled: Callable[[str], list[int]], cluster_base_port: int
) -> None:
    session = f"lazydisk-sweep-{os.getpid()}"
    runner, log_path = start_run(cluster_base_port, session, isolated_reports)
    try:
        wait_for_line(runner, "READY", READY_S, log_path)
        assert len(mounts_of(session)) == 1
        disk_pid = next(int(pid) for pid in labelled(session)
                        if "harness.lazydisk" in Path(f"/proc/{pid}/cmdline").read_text())
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        os.killpg(disk_pid, signal.SIGKILL)  # no chance to unmount itself: a dead mount
        assert len(mounts_of(session)) == 1
        result = sweep(root=isolated_reports / ".sessions")
        assert result.clusters == [f"{session}-c0"]
        assert mounts_of(session) == []
        assert labelled(session) == []
        assert all_records(isolated_reports / ".sessions") == []
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in labelled(session):
            os.killpg(pid, signal.SIGKILL)
        for point in mounts_of(session):
            subprocess.run(["fusermount3", "-u", "-z", point], check=False)


def test_ctrl_c_unmounts_the_lazy_disk(
    isolated_reports: Path, labelled: Callable[[str], list[int]], cluster_base_port: int
) -> None:
    session = f"lazydisk-sigint-{os.getpid()}"
    runner, log_path = start_run(cluster_base_port, session, isolated_reports)
    try:
        wait_for_line(runner, "READY", READY_S, log_path)
        assert len(mounts_of(session)) == 1
        signalled_exit(runner, signal.SIGINT, 30, log_path)
        assert mounts_of(session) == []
        assert labelled(session) == []
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in labelled(session):
            os.killpg(pid, signal.SIGKILL)
        for point in mounts_of(session):
            subprocess.run(["fusermount3", "-u", "-z", point], check=False)


def test_the_lazy_disk_is_refused_in_one_line_off_the_local_and_docker_backends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reason = disk_refusal(ClusterSpec(backend="ssh", disk_faults=True))
    assert reason is not None and "ssh" in reason and "\n" not in reason
    assert disk_refusal(ClusterSpec(disk_faults=True)) is None  # here, FUSE is
    assert disk_refusal(ClusterSpec(backend="docker", disk_faults=True)) is None
    # A docker host without the FUSE device: the store's container could not mount.
    monkeypatch.setattr(reference, "DOCKER_FUSE_DEVICE", str(tmp_path / "no-fuse"))
    reason = disk_refusal(ClusterSpec(backend="docker", disk_faults=True))
    assert reason is not None and "/dev/fuse" in reason and "\n" not in reason
