"""A SIGKILLed run leaves processes behind; the sweep finds them by label and removes them."""

from __future__ import annotations

import contextlib
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
# A 2-node cluster's bring-up (store, nodes, init) on a loaded 2-core machine.
READY_S = 90.0
# Every run's cluster takes its ports from `cluster_base_port` (the worker's own block): under
# pytest-xdist, and with --repeat, copies of one test run at the same time on other workers.

# The run starts as from a shell: SIGINT at Python's default handler and unblocked, whatever
# the pytest worker that starts it inherited; SIGUSR1 dumps every thread's stack to its log
# (see signalled_exit).
PRELUDE = """
import faulthandler, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
faulthandler.register(signal.SIGUSR1, all_threads=True)
"""

RUN = PRELUDE + """
import sys, time
from harness.cluster import start_cluster
from harness.topology import ClusterSpec
spec = ClusterSpec(nodes=2, base_port=int(sys.argv[1]), session=sys.argv[2])
start_cluster(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
print("READY", flush=True)
time.sleep(300)
"""


def start_run(port: int, session: str, reports: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The RUN script on its own ports; its progress and errors go to a log beside `reports`."""
    log_path = reports.parent / f"{session}.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUN, str(port), session], cwd=REPO,
            stdout=subprocess.PIPE, stderr=log, env=subprocess_env(reports),
        )
    return runner, log_path


def wait_for_line(
    proc: subprocess.Popen[bytes], wanted: str, timeout_s: float, log_path: Path
) -> None:
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
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)  # closed its stdout: it is exiting
    ended = "still running" if proc.poll() is None else f"exited with status {proc.poll()}"
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
    raise AssertionError(
        f"run did not print {wanted!r} within {timeout_s:g} s ({ended}); got {seen!r}; "
        f"its log {log_path} ends:\n{tail}")


def signalled_exit(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float,
                   log_path: Path) -> None:
    """Send `sig` and wait for the run to exit; if it does not, the failure shows its signal
    masks and every thread's stack (the run dumps them on SIGUSR1) from its log."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        masks = [line for line in status if line.startswith(("SigPnd", "SigBlk", "SigIgn",
                                                              "SigCgt"))]
    except OSError:
        masks = []
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
    raise AssertionError(f"the run did not exit within {timeout_s:g} s of {sig.name}; its "
                         f"signal masks {masks}; its log {log_path} ends:\n{tail}")


def test_sigkilled_run_is_swept(
    isolated_reports: Path, labelled: Callable[[str], list[int]], cluster_base_port: int
) -> None:
    session = f"sweep-test-{os.getpid()}"
    runner, log_path = start_run(cluster_base_port, session, isolated_reports)
    try:
        wait_for_line(runner, "READY", READY_S, log_path)
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
    sig: signal.Signals, isolated_reports: Path, labelled: Callable[[str], list[int]],
    cluster_base_port: int,
) -> None:
    session = f"signal-test-{sig.name.lower()}-{os.getpid()}"
    runner, log_path = start_run(cluster_base_port, session, isolated_reports)
    try:
        wait_for_line(runner, "READY", READY_S, log_path)
        assert len(labelled(session)) >= 4
        signalled_exit(runner, sig, 30, log_path)
        assert labelled(session) == [], f"left running after {sig.name}"
        assert all_records(isolated_reports / ".sessions") == []
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in labelled(session):
            os.killpg(pid, signal.SIGKILL)
