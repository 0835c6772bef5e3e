"""`--dist loadscope` under the harness: tests that share nothing with their module are
spread over the workers, tests that share a module, class or conftest session fixture stay
together. The inner run is a real pytest-xdist run of a tiny test tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scheduling import (
    KEPT_RUNS,
    DurationLog,
    read_alone,
    read_duration_runs,
    read_durations,
)

RECORD = '''
import json, os, time

def record(request, pause=0.0):
    time.sleep(pause)
    out = os.environ["SCHEDULING_OUT"]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(out, request.node.nodeid.replace("/", "_").replace(":", "_")), "w") as f:
        json.dump({"test": request.node.nodeid, "worker": worker, "at": time.monotonic()}, f)
'''

CONFTEST = RECORD + '''
import pytest

@pytest.fixture(scope="session")
def made_once_per_worker():
    return object()
'''

ALONE = '''
from conftest import record

def test_one(request, cluster_spec):
    record(request, 1.0)

def test_two(request, tmp_path):
    record(request, 1.0)

def test_three(request):
    record(request, 1.0)

def test_four(request):
    record(request, 1.0)
'''

MODULE_TIED = '''
import pytest
from conftest import record

@pytest.fixture(scope="module")
def shared():
    return object()

def test_a(request, shared):
    record(request)

def test_b(request, shared):
    record(request)

def test_c(request, shared):
    record(request)
'''

SESSION_TIED = '''
from conftest import record

def test_x(request, made_once_per_worker):
    record(request)

def test_y(request, made_once_per_worker):
    record(request)
'''

CLASS_TIED = '''
import pytest
from conftest import record

class TestShared:
    @pytest.fixture(scope="class")
    def shared(self):
        return object()

    def test_p(self, request, shared):
        record(request)

    def test_q(self, request, shared):
        record(request)
'''


def run_tree(tmp_path: Path, *args: str) -> tuple[dict[str, str], Path]:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, text in {"conftest.py": CONFTEST, "test_alone.py": ALONE,
                       "test_module_tied.py": MODULE_TIED,
                       "test_session_tied.py": SESSION_TIED,
                       "test_class_tied.py": CLASS_TIED}.items():
        (tree / name).write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"--alluredir={tmp_path / 'allure'}", "--dist", "loadscope", *(args or ("-n", "2"))],
        cwd=tree, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SCHEDULING_OUT": str(out), "TMPDIR": str(temp),
             "HSTREAM_CONFORMANCE_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = sorted((json.loads(path.read_text()) for path in out.iterdir()),
                 key=lambda entry: entry["at"])
    return {entry["test"]: entry["worker"] for entry in ran}, temp  # (in the order run)


@pytest.mark.slow
def test_tests_that_share_nothing_spread_and_the_rest_stay_together(tmp_path: Path) -> None:
    workers, temp = run_tree(tmp_path)
    assert len(workers) == 4 + 3 + 2 + 2, workers

    def of(module: str) -> set[str]:
        return {worker for test, worker in workers.items() if test.startswith(module)}

    # Four 1 s tests that share nothing: the second worker is not left waiting on the first.
    assert of("test_alone.py") == {"gw0", "gw1"}, workers
    # A module fixture, a class fixture, a conftest's session fixture: one worker each.
    assert len(of("test_module_tied.py")) == 1, workers
    assert len(of("test_class_tied.py")) == 1, workers
    assert len(of("test_session_tied.py")) == 1, workers
    # The workers' scope files go with the run.
    assert not [path for path in temp.rglob("hstream-conformance-scopes-*")], \
        sorted(temp.rglob("*"))


def test_scopes_are_read_from_the_first_readable_worker_file(tmp_path: Path) -> None:
    assert read_alone(None) is None
    assert read_alone(str(tmp_path)) is None  # no worker wrote: plain loadscope
    (tmp_path / "gw0.json").write_text("{half")
    (tmp_path / "gw1.json").write_text(json.dumps(["t.py::test_a"]))
    assert read_alone(str(tmp_path)) == frozenset({"t.py::test_a"})


@pytest.mark.slow
def test_the_longest_unit_goes_first_by_the_machine_s_figures(tmp_path: Path) -> None:
    # A first run with no figures: loadscope's order (most tests first), and each test's
    # time kept for the backend.
    first, _ = run_tree(tmp_path, "-n", "1")
    kept = read_durations(tmp_path / "cache" / "durations" / "local.json")
    assert set(kept) == set(first), kept
    assert kept["test_alone.py::test_one"] >= 1.0, kept
    assert next(iter(first)).startswith("test_module_tied.py"), list(first)
    # Figures that make one test of the tied module, and one single test, the longest.
    figures = {**kept, "test_session_tied.py::test_y": 300.0, "test_alone.py::test_four": 200.0}
    (tmp_path / "cache" / "durations" / "local.json").write_text(json.dumps(figures))
    (tmp_path / "tree").rename(tmp_path / "tree-1")
    (tmp_path / "out").rename(tmp_path / "out-1")
    (tmp_path / "temp").rename(tmp_path / "temp-1")
    second, _ = run_tree(tmp_path, "-n", "1")
    order = list(second)
    # One worker runs the units in the order they are handed out: the session-tied module
    # (300 s and a median) first, then the 200 s test, and the tied module's tests together.
    assert order[:3] == ["test_session_tied.py::test_x", "test_session_tied.py::test_y",
                         "test_alone.py::test_four"], order
    tied = [order.index(f"test_module_tied.py::test_{t}") for t in "abc"]
    assert tied == list(range(tied[0], tied[0] + 3)), order
    # A file that does not read is no figures, not an error.
    assert read_durations(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("[1, 2")
    assert read_durations(tmp_path / "bad.json") == {}


def test_a_test_costs_the_lower_median_of_its_last_runs(tmp_path: Path) -> None:
    path = tmp_path / "durations" / "docker.json"
    path.parent.mkdir()
    # a lone number (as files once held) is one run; what is no number is left out
    path.write_text(json.dumps({"t::a": 400.0, "t::b": [1, 2, 3, 4, 5, 6], "t::c": "x",
                                "t::d": [True, 2.0]}))
    assert read_durations(path) == {"t::a": 400.0, "t::b": 4.0, "t::d": 2.0}
    log = DurationLog(path)
    # the first run built an image (400 s); two ordinary runs after it outvote it
    log.spent = {"t::a": 60.0}
    log.pytest_sessionfinish()
    assert read_durations(path)["t::a"] == 60.0
    log.spent = {"t::a": 62.0, "t::new": 3.0}
    log.pytest_sessionfinish()
    assert read_duration_runs(path)["t::a"] == [400.0, 60.0, 62.0]
    assert read_durations(path) == {"t::a": 62.0, "t::b": 4.0, "t::d": 2.0, "t::new": 3.0}
    for t in range(KEPT_RUNS):  # only the latest runs are kept
        log.spent = {"t::a": float(t)}
        log.pytest_sessionfinish()
    assert read_duration_runs(path)["t::a"] == [float(t) for t in range(KEPT_RUNS)]
