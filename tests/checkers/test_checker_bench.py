"""The checker benchmark at a small scale: valid history judged valid, injections found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "checker_bench.py"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--ops", "20000", *args],
        capture_output=True, text=True, timeout=240,
    )


def test_generated_history_is_valid():
    done = _bench("--seed", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"valid": true' in done.stdout


def test_every_checker_has_its_own_figure():
    done = _bench("--seed", "6", "--repeat", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    names = [line.split()[0] for line in done.stdout.splitlines()[1:]
             if " ops/cpu-s" in line and line.split()[0] not in ("all", "check_all")]
    assert names and set(summary["cpu_seconds_per_checker"]) == set(names)
    assert summary["cpu_seconds"] >= max(summary["cpu_seconds_per_checker"].values())
    # check_all composes every checker, the queue checker included
    composed = next(line for line in done.stdout.splitlines() if line.startswith("check_all "))
    assert f"({', '.join(names)})" in composed
    assert summary["check_all_cpu_seconds"] > 0


def test_over_budget_fails():
    done = _bench("--seed", "4", "--budget", "0.001")
    assert done.returncode == 1
    assert "check_all took" in done.stderr and "over the 0.001 s budget" in done.stderr


def test_injected_anomalies_are_found_exactly():
    done = _bench("--seed", "5", "--inject", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "found every injected anomaly: {'lost': 7, 'unexpected': 7, 'undelivered': 7}" in (
        done.stdout
    )
