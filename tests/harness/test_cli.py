"""`hstream-conformance cluster up|status|down` with real processes, detached from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_probes import call_echo, subprocess_env

from harness.cleanup import all_records

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def cli(reports: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=subprocess_env(reports), timeout=timeout_s)


def test_up_status_down(isolated_reports: Path, labelled: Callable[[str], list[int]]) -> None:
    up = cli(isolated_reports, "cluster", "up", "--nodes", "2", "--base-port", "19600", "--json")
    try:
        assert up.returncode == 0, up.stderr
        waiting = "starting node-2 on localhost ... waiting for 'Server is started on port 19600'"
        assert waiting in up.stderr
        status = json.loads(up.stdout)
        session = status["spec"]["session"]
        assert status["toxiproxy_url"] == "http://127.0.1.1:19603"
        assert [n["client_url"] for n in status["nodes"]] == [
            "hstream://127.0.1.11:19600", "hstream://127.0.1.12:19600"]
        assert [n["gossip"] for n in status["nodes"]] == ["127.0.1.11:19601", "127.0.1.12:19601"]
        # the CLI has exited; the cluster (store, 2 nodes, Toxiproxy) serves through proxies
        for node in status["nodes"]:
            assert call_echo(node["client_url"]) == "ping"
            assert node["pid"] in labelled(session)

        listed = cli(isolated_reports, "cluster", "status")
        assert listed.returncode == 0
        assert f"{session}-c0: detached, 4/4 processes running" in listed.stdout, listed.stdout
        assert "node 2: hstream://127.0.1.12:19600" in listed.stdout

        down = cli(isolated_reports, "cluster", "down")
        assert down.returncode == 0, down.stderr
        assert f"removed {session}-c0" in down.stdout
        deadline = time.monotonic() + 10
        while labelled(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert labelled(session) == []
        assert all_records(isolated_reports / ".sessions") == []
        assert cli(isolated_reports, "cluster", "down").stdout.strip() == "nothing to remove"
    finally:
        cli(isolated_reports, "cluster", "down")


def test_down_of_an_unknown_label_is_one_clear_error(isolated_reports: Path) -> None:
    done = cli(isolated_reports, "cluster", "down", "--label", "no-such-cluster")
    assert done.returncode == 2
    assert "no cluster labelled 'no-such-cluster'" in done.stderr
    assert "Traceback" not in done.stderr
