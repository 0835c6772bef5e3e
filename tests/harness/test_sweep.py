"""A SIGKILLed run leaves processes behind; the sweep finds them by label and removes them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_probes import subprocess_env

from harness.cleanup import all_records, sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

RUN = """
import sys, time
from harness.cluster import start_cluster
from harness.topology import ClusterSpec
spec = ClusterSpec(nodes=2, base_port=int(sys.argv[1]), session=sys.argv[2])
start_cluster(spec, progress=lambda line: None)
print("READY", flush=True)
time.sleep(300)
"""


def wait_for_line(proc: subprocess.Popen[bytes], wanted: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            seen += chunk
            if wanted.encode() in seen:
                return
            if not chunk:
                break
    raise AssertionError(f"run did not print {wanted!r} (status {proc.poll()}); got {seen!r}")


def test_sigkilled_run_is_swept(
    isolated_reports: Path, labelled: Callable[[str], list[int]]
) -> None:
    session = f"sweep-test-{os.getpid()}"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUN, "19300", session], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=subprocess_env(isolated_reports),
    )
    try:
        wait_for_line(runner, "READY", 90)
        started = labelled(session)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        # store, two nodes and the embedded Toxiproxy outlive the killed run
        leftovers = labelled(session)
        assert len(leftovers) >= 4 and set(leftovers) == set(started), (started, leftovers)
        records = all_records(isolated_reports / ".sessions")
        assert [r.label for r in records] == [f"{session}-c0"]
        assert not records[0].owner_alive()

        listed = subprocess.run(
            [sys.executable, "-m", "harness.cli", "cluster", "status", "--json"],
            capture_output=True, text=True, cwd=REPO, env=subprocess_env(isolated_reports),
            timeout=60,
        )
        status = json.loads(listed.stdout)
        assert status[0]["owner_alive"] is False and all(status[0]["processes_alive"].values())

        result = sweep(root=isolated_reports / ".sessions")
        assert result.clusters == [f"{session}-c0"]
        assert sorted(result.killed_pids) == sorted(leftovers)
        assert labelled(session) == []
        assert all_records(isolated_reports / ".sessions") == []
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in labelled(session):  # only if an assertion above failed mid-way
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_tear_the_cluster_down(
    sig: signal.Signals, isolated_reports: Path, labelled: Callable[[str], list[int]]
) -> None:
    session = f"signal-test-{sig.name.lower()}-{os.getpid()}"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUN, "19320", session], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=subprocess_env(isolated_reports),
    )
    try:
        wait_for_line(runner, "READY", 90)
        assert len(labelled(session)) >= 4
        runner.send_signal(sig)
        runner.wait(30)
        assert labelled(session) == [], f"left running after {sig.name}"
        assert all_records(isolated_reports / ".sessions") == []
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in labelled(session):
            os.killpg(pid, signal.SIGKILL)
