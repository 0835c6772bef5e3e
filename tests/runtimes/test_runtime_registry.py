"""Runtimes are found through entry points: a user's package adds one without editing ours.

The proof is a runtime that lives outside this repository's packages: a throwaway
distribution (a module and a `.dist-info` with one entry point) on `sys.path` of a fresh
interpreter, which starts a real reference cluster through it and faults a node. Nothing of
harness is edited for it, and nothing outside a runtime's own module names that runtime.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtimes import ENTRY_POINT_GROUP, runtime_class, runtime_names

REPO = Path(__file__).resolve().parents[2]
BUILT_IN = ("local", "docker", "ssh")

# A runtime of a user's own: the local runtime's hosts under another name, with every
# spawn counted, so the test sees the orchestration went through it.
USER_RUNTIME = '''
from harness.runtimes.local import LocalHost, LocalRuntime

SPAWNED = []


class CountingHost(LocalHost):
    name = "counting-host"

    def spawn(self, spec, env, log_path):
        SPAWNED.append(spec.name)
        return super().spawn(spec, env, log_path)


class CountingRuntime(LocalRuntime):
    name = "counting"

    def __init__(self, spec, progress, record):
        super().__init__(spec, progress, record)
        self.host = CountingHost(record)
'''

DRIVER = '''
import sys
from harness.cluster import start_cluster
from harness.runtimes import runtime_names
from harness.topology import ClusterSpec
import counting_runtime

print("names", " ".join(runtime_names()))
spec = ClusterSpec(nodes=2, backend="counting", base_port=int(sys.argv[1]))
with start_cluster(spec, progress=lambda line: None) as cluster:
    cluster.kill(2)
    cluster.restart(2)
    print("hosts", sorted({node.host for node in cluster.nodes}))
    print("spawned", sorted(counting_runtime.SPAWNED))
'''


def test_built_in_runtimes_are_registered() -> None:
    assert set(BUILT_IN) <= set(runtime_names())
    for name in BUILT_IN:
        assert runtime_class(name).name == name


def test_an_unknown_runtime_is_one_line_naming_the_registered_ones() -> None:
    from harness import HarnessError

    with pytest.raises(HarnessError) as caught:
        runtime_class("kubernetes")
    message = str(caught.value)
    assert "unknown backend 'kubernetes'" in message and "local" in message, message
    assert "\n" not in message


@pytest.mark.slow
def test_a_runtime_from_another_package_runs_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "counting_runtime.py").write_text(USER_RUNTIME)
    info = tmp_path / "counting_runtime-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: counting-runtime\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ncounting = counting_runtime:CountingRuntime\n")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "19640"], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                           "HSTREAM_CONFORMANCE_REPORTS": str(tmp_path / "reports")})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "counting" in lines["names"].split(), lines
    assert lines["hosts"] == "['counting-host']", lines
    # store, toxiproxy, two nodes, and node-2 once more after its kill
    assert lines["spawned"] == "['node-1', 'node-2', 'node-2', 'store', 'toxiproxy']", lines


def test_nothing_outside_a_runtime_module_names_a_runtime_module() -> None:
    pattern = re.compile(r"harness\.runtimes\.(local|docker|ssh)\b|runtimes/(local|docker|ssh)\.py")
    offenders = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[:2] == ("harness", "runtimes"):
            continue  # a runtime's own modules (and its helpers) may name it
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
