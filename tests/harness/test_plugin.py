"""The pytest plugin end to end: options reach cluster_spec; a failing test gets node logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cluster_probes import subprocess_env

REPO = Path(__file__).resolve().parents[2]

SPEC_TEST = """
def test_spec(cluster_spec):
    assert cluster_spec.nodes == 2
    assert cluster_spec.seed == 5
    assert cluster_spec.defects == ("no-refute",)
    assert cluster_spec.toxiproxy is False
"""

FAILING_TEST = """
def test_fails_with_logs(cluster_factory):
    cluster = cluster_factory(nodes=1, base_port=19700, toxiproxy=False)
    assert cluster.client_url() == "hstream://127.0.0.11:19700"
    assert False, "deliberate failure"
"""


def run_pytest(tmp_path: Path, reports: Path, body: str, *options: str) -> str:
    test_file = tmp_path / "test_generated.py"
    test_file.write_text(body)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", "/dev/null", *options, str(test_file)],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(reports), timeout=180,
    )
    return done.stdout + done.stderr


def test_options_build_the_spec(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports, SPEC_TEST, "--nodes", "2", "--seed", "5",
                        "--defect", "no-refute", "--no-toxiproxy")
    assert "1 passed" in output, output
    assert "seed=5 (replay with --seed 5)" in output, output
    assert "defects on: no-refute" in output, output


@pytest.mark.slow
def test_failing_test_prints_node_logs(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports, FAILING_TEST)
    assert "1 failed" in output, output
    assert "cluster logs" in output and "node 1: running client 127.0.0.11:19700" in output, output
    assert "node-1.log" in output and "Server is started on port 19700" in output, output
    assert "store.log" in output, output
