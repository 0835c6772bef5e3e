"""Bad input gives one clear message and leaves nothing running."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_probes import subprocess_env

from harness.cleanup import all_records
from harness.cluster import ClusterStartError, PortInUse, start_cluster
from harness.targets import TargetError
from harness.topology import ClusterSpec

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], reports: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=subprocess_env(reports))


def assert_one_clear_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


def test_malformed_topology_file_in_pytest_and_cli(tmp_path: Path, isolated_reports: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nnodes = \"three\"\n")
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--topology", str(bad), str(REPO / "tests/harness/test_grudges.py")],
               isolated_reports)
    assert done.returncode == 4, done  # pytest's usage-error status
    assert_one_clear_error(done, f"{bad}: cluster.nodes: expected int, got str 'three'")
    done = run([sys.executable, "-m", "harness.cli", "cluster", "up", "--topology", str(bad)],
               isolated_reports)
    assert done.returncode == 2
    assert_one_clear_error(done, f"{bad}: cluster.nodes: expected int")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--target", "kafka"], "unknown target 'kafka'; use 'reference' or 'hstream:<image>'"),
        (["--defect", "nope"], "unknown defect nope; the reference server knows: "),
        (["--backend", "k8s"], "unknown backend 'k8s'"),
    ],
)
def test_unknown_names_on_the_command_line(
    flags: list[str], needle: str, isolated_reports: Path, labelled: Callable[[str], list[int]]
) -> None:
    done = run([sys.executable, "-m", "harness.cli", "cluster", "up", *flags], isolated_reports)
    assert done.returncode == 2, done
    assert_one_clear_error(done, needle)
    assert all_records(isolated_reports / ".sessions") == []
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags,
                str(REPO / "tests/harness/test_grudges.py")], isolated_reports)
    assert done.returncode == 4, done
    assert_one_clear_error(done, needle)


def test_unknown_defect_and_target_in_the_api(isolated_reports: Path) -> None:
    with pytest.raises(TargetError, match="unknown defect nope"):
        start_cluster(
            ClusterSpec(nodes=1, base_port=19200, defects=("nope",)))
    with pytest.raises(TargetError, match="cannot run on the local backend; use --backend docker"):
        start_cluster(
            ClusterSpec(nodes=1, target="hstream:hstreamdb/hstream:v0.20.0"))
    assert all_records(isolated_reports / ".sessions") == []


@pytest.mark.slow
def test_port_in_use_names_the_port_and_starts_nothing(
    isolated_reports: Path, labelled: Callable[[str], list[int]]
) -> None:
    spec = ClusterSpec(nodes=2, base_port=19210)
    with socket.create_server(("127.0.0.12", 19210)):
        with pytest.raises(PortInUse) as caught:
            start_cluster(spec, progress=lambda _: None)
    message = str(caught.value)
    assert "port 127.0.0.12:19210 (node-2 client) is already in use" in message
    assert "--base-port" in message
    assert labelled(spec.session) == []
    assert all_records(isolated_reports / ".sessions") == []


@pytest.mark.slow
def test_node_failing_at_start_is_named_and_everything_is_stopped(
    isolated_reports: Path, labelled: Callable[[str], list[int]]
) -> None:
    # The round-trip timeout must be shorter than the probe period: node-1 refuses to start
    # after the store and Toxiproxy are already up, so their teardown is what is tested.
    spec = ClusterSpec(nodes=1, base_port=19220,
                       gossip={"probe_interval_ms": 100, "roundtrip_timeout_ms": 500})
    lines: list[str] = []
    with pytest.raises(ClusterStartError) as caught:
        start_cluster(spec, progress=lines.append)
    message = str(caught.value)
    assert "node-1 exited with status" in message, message
    assert "Server is started on port 19220" in message, message
    assert "node-1.log" in message, message
    waiting = "starting node-1 on localhost ... waiting for"
    assert any(line.startswith(waiting) for line in lines), lines
    assert labelled(spec.session) == []
    assert all_records(isolated_reports / ".sessions") == []
