"""Parallel runs: each xdist worker owns its ports and names, all share the run's seed, and the
report sees one run. The inner runs are real pytest-xdist runs of a tiny test file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import parallel

INNER = '''
import json, os

def test_a(cluster_spec, request):
    out = os.environ["PARALLEL_OUT"]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(out, f"{worker}-{request.node.name}.json"), "w") as f:
        json.dump({"seed": cluster_spec.seed, "session": cluster_spec.session,
                   "base_port": cluster_spec.base_port}, f)

def test_b(cluster_spec, request):
    test_a(cluster_spec, request)

def test_c(cluster_spec, request):
    test_a(cluster_spec, request)

def test_d(cluster_spec, request):
    test_a(cluster_spec, request)
'''


def run_inner(tmp_path: Path, *args: str) -> list[dict]:
    (tmp_path / "test_inner.py").write_text(INNER)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "test_inner.py", "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", f"--alluredir={tmp_path / 'allure'}", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PARALLEL_OUT": str(out)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.mark.slow
def test_workers_share_the_seed_and_own_their_ports_and_names(tmp_path: Path) -> None:
    seen = run_inner(tmp_path, "-n", "2", "--seed", "1234", "--base-port", "20000")
    assert len(seen) == 4
    assert {s["seed"] for s in seen} == {1234}
    sessions = {s["session"] for s in seen}
    run = {s.rsplit("-gw", 1)[0] for s in sessions}
    assert len(run) == 1 and all("-gw" in s for s in sessions), sessions
    ports = {s["session"].rsplit("-gw", 1)[1]: s["base_port"] for s in seen}
    for worker, port in ports.items():
        assert port == 20000 + parallel.WORKER_PORT_SPAN * int(worker), ports
    # One run file for the report, written by the controller, named by the run's session.
    run_files = list((tmp_path / "allure").glob("*-run.json")) or [
        p for p in (tmp_path / "allure").iterdir() if p.name.startswith(next(iter(run)))
    ]
    assert len(run_files) == 1, sorted(p.name for p in (tmp_path / "allure").iterdir())
    assert json.loads(run_files[0].read_text())["session"] == next(iter(run))


@pytest.mark.slow
def test_a_random_seed_is_drawn_once_for_all_workers(tmp_path: Path) -> None:
    seen = run_inner(tmp_path, "-n", "2")
    assert len({s["seed"] for s in seen}) == 1, seen


def test_a_plain_run_keeps_its_own_label_and_port(tmp_path: Path) -> None:
    seen = run_inner(tmp_path, "--seed", "7", "--base-port", "20000")
    assert {s["base_port"] for s in seen} == {20000}
    assert all("-gw" not in s["session"] for s in seen)


def test_auto_workers_follow_the_override_and_stay_bounded(monkeypatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "5")
    assert parallel.auto_workers() == 5
    monkeypatch.setenv(parallel.WORKERS_ENV, "999")
    assert parallel.auto_workers() == parallel.MAX_WORKERS
    monkeypatch.delenv(parallel.WORKERS_ENV)
    assert 1 <= parallel.auto_workers() <= parallel.MAX_WORKERS


def test_worker_ports_stay_below_the_ephemeral_range() -> None:
    # The hstream target adds 10000 to node ports when proxied.
    highest = parallel.worker_base_port(6570, parallel.MAX_WORKERS - 1)
    assert highest + parallel.WORKER_PORT_SPAN + 10000 < 32768
