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
             if " ops/cpu-s" in line and not line.startswith("all ")]
    assert names and set(summary["cpu_seconds_per_checker"]) == set(names)
    assert summary["cpu_seconds"] >= max(summary["cpu_seconds_per_checker"].values())


def test_injected_anomalies_are_found_exactly():
    done = _bench("--seed", "5", "--inject", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "found every injected anomaly: {'lost': 7, 'unexpected': 7, 'undelivered': 7}" in (
        done.stdout
    )
