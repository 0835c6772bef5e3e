"""Histories reach the allure result however a test registers them: before its call, or as
its history fixture closes the file at teardown (suites/clients) — the report draws plots
only from what is attached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

INNER = '''
import json
import pytest

def write(path, n):
    path.write_text("\\n".join(json.dumps({"index": i, "process": "p", "type": "ok",
                                            "f": "view", "time": i}) for i in range(n)))

@pytest.fixture
def closed_at_teardown(request, tmp_path):
    path = tmp_path / "teardown.jsonl"
    yield
    write(path, 3)  # the file is complete only now
    request.node.user_properties.append(("history", str(path)))

def test_registered_at_teardown(closed_at_teardown):
    pass

def test_registered_during_call(request, tmp_path):
    path = tmp_path / "call.jsonl"
    request.node.user_properties.append(("history", str(path)))
    request.node.user_properties.append(("history", str(path)))  # twice: attached once
    write(path, 2)
'''


def test_histories_registered_at_teardown_are_attached(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    results = tmp_path / "allure"
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "test_inner.py", "-q", f"--alluredir={results}",
            # The report's plugin alone: the harness's (clusters, sweeps) is not needed here.
            "-p", "no:hstream_conformance", "-p", "no:cacheprovider",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    attached: dict[str, list[int]] = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        attached[data["name"]] = [
            len((results / a["source"]).read_text().splitlines())
            for a in data.get("attachments", [])
            if a["name"] == "history"
        ]
    assert attached == {"test_registered_at_teardown": [3], "test_registered_during_call": [2]}
