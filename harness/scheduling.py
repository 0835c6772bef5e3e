"""How `--dist loadscope` hands tests to xdist workers: module by module, except the tests
that share nothing with their module.

xdist's loadscope keeps a module's tests (a class's, for methods) on one worker, so a
module-scoped cluster starts once. But most cluster tests start their own clusters
(`cluster_factory`): a module of them is one long unit that a single worker runs while the
others idle (the durability and membership modules took 413 s and 355 s of a 523 s docker
run). Here a test is a unit of its own when nothing in its fixture closure is shared with
its neighbours:
- no fixture of module, package or class scope (the plugin's `cluster`, a suite's
  module cluster), and
- no session fixture written in a conftest or a test module (sshd hosts, an image build):
  those are made once per worker, so spreading their tests would make them once per worker.
  Session fixtures of plugins (`cluster_spec`, pytest's own) are cheap and shared by all.
Tied tests keep loadscope's unit (module or class), in collection order within it. A
fixture asked for by name while the test runs (`request.getfixturevalue`) is not in the
closure: a test that takes its module's cluster that way is spread, and the cluster may
then start on more than one worker (slower, never wrong).

xdist's controller never collects, so it cannot see fixtures: each worker writes, after its
collection, the node ids of the tests that may run alone into a file of the run's
(SCOPES_KEY in workerinput names the directory), and the scheduler reads it before handing
out the first unit. Without the file (a worker that died collecting) the run is plain
loadscope. Node ids are never changed (xdist's loadgroup appends `@group`; the report, the
histories and `--repeat` key on node ids).

A worker is given its next unit when it has one test left to run (xdist gives one at three):
with single-test units that last a minute each, a worker holding three while others idle
would make the tail of the run. And the unit given is the longest left, by what the tests
took in earlier runs on this machine (DurationLog keeps each test's last KEPT_RUNS times per
backend, in harness.machine_cache(), and a test costs the lower median of them: the first
test to need an image builds it, once, and a run that took minutes for that must not put
it first for good): handed out in collection order, a 70 s test that happened to come last
ran alone for the last minute of a docker run. Tests never timed count as the median of
those that were; with no figures at all the order is loadscope's.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import statistics
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from harness import machine_cache

SCOPES_KEY = "hstream_conformance_scopes"
_DIR_KEY = pytest.StashKey[str]()
TIED_SCOPES = frozenset({"module", "package", "class"})


def may_run_alone(item: pytest.Item) -> bool:
    """True when no fixture of the test's closure is shared with other tests of its module
    (see the module docstring). Unknown fixture information ties the test."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", None)
    if definitions is None:
        return False
    for chain in definitions.values():
        if not chain:
            continue
        used = chain[-1]  # the definition closest to the test is the one it gets
        scope = str(getattr(used, "scope", "function"))
        if scope in TIED_SCOPES:
            return False
        if scope == "session" and defined_by_the_tests(item.config, used):
            return False
    return True


def defined_by_the_tests(config: pytest.Config, definition: Any) -> bool:
    """A fixture written in a conftest or a test module (not by a plugin or pytest)."""
    try:
        name = Path(inspect.getfile(definition.func)).name
    except (AttributeError, TypeError):
        return True  # unknown: keep its tests together
    patterns = config.getini("python_files") or ["test_*.py"]
    return name == "conftest.py" or any(fnmatch(name, pattern) for pattern in patterns)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller, loadscope) Tell each worker where to write its scopes; the
    directory is made with the first worker, so a run without workers makes none."""
    config = node.config
    if getattr(config.option, "dist", "no") != "loadscope":
        return
    if _DIR_KEY not in config.stash:
        config.stash[_DIR_KEY] = tempfile.mkdtemp(prefix="hstream-conformance-scopes-")
    node.workerinput[SCOPES_KEY] = config.stash[_DIR_KEY]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """(xdist worker) Write the node ids of this worker's tests that may run alone."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or SCOPES_KEY not in workerinput:
        return
    directory = Path(workerinput[SCOPES_KEY])
    alone = [item.nodeid for item in items if may_run_alone(item)]
    target = directory / f"{workerinput.get('workerid', 'gw0')}.json"
    partial = target.with_suffix(".part")
    partial.write_text(json.dumps(alone))
    os.replace(partial, target)  # the scheduler never reads half a file


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_DIR_KEY, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def durations_path(config: pytest.Config) -> Path:
    """Where the run's backend keeps what its tests took on this machine."""
    backend = getattr(config.option, "backend", None) or "local"
    return machine_cache() / "durations" / f"{backend}.json"


KEPT_RUNS = 5  # the times kept per test, the latest last


def read_duration_runs(path: Path) -> dict[str, list[float]]:
    """node id -> its kept times in seconds (setup, call and teardown), the latest last; {}
    when there is no readable file. (A lone number, as files once held, is one run.)"""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    runs: dict[str, list[float]] = {}
    for nodeid, kept in found.items():
        times = kept if isinstance(kept, list) else [kept]
        numbers = [float(t) for t in times
                   if isinstance(t, int | float) and not isinstance(t, bool)]
        if numbers:
            runs[str(nodeid)] = numbers[-KEPT_RUNS:]
    return runs


def read_durations(path: Path) -> dict[str, float]:
    """node id -> what it costs: the lower median of its kept times (one slow run among
    them, an image built, does not count), {} when there is no readable file."""
    return {nodeid: statistics.median_low(times)
            for nodeid, times in read_duration_runs(path).items()}


class DurationLog:
    """(the controller, or a plain run) What each test took, added to the machine's
    figures for the backend when the session ends: the figures the next parallel run
    orders its units by."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spent: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.spent[report.nodeid] = self.spent.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if not self.spent:
            return
        merged = read_duration_runs(self.path)
        for nodeid, spent in self.spent.items():
            merged[nodeid] = [*merged.get(nodeid, []), spent][-KEPT_RUNS:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.part")
            partial.write_text(json.dumps(merged, sort_keys=True))
            os.replace(partial, self.path)  # a concurrent run reads the old or the new
        except OSError:
            pass  # only an ordering hint: a read-only cache costs the next run its order


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None:
        config.pluginmanager.register(DurationLog(durations_path(config)),
                                      "hstream-conformance-durations")


def read_alone(directory: str | None) -> frozenset[str] | None:
    """The tests that may run alone, from the first worker's file that reads; None if none."""
    if directory is None:
        return None
    for path in sorted(Path(directory).glob("*.json")):
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(found, list):
            return frozenset(str(nodeid) for nodeid in found)
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The scheduler for `--dist loadscope`, or None to leave the choice to xdist."""
    directory = config.stash.get(_DIR_KEY, None)
    if directory is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SpreadLoadScopeScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """loadscope, with the tests that share nothing as units of their own."""

        _alone: frozenset[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._alone is None:
                self._alone = read_alone(directory) or frozenset()
            if nodeid in self._alone:
                return nodeid
            return str(super()._split_scope(nodeid))

        _ordered = False

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:
                self._ordered = True
                self._longest_first()
            super()._assign_work_unit(node)

        def _longest_first(self) -> None:
            """Order the work queue once, longest unit first (see the module docstring):
            a unit's cost never changes, so handing out the head is handing out the
            longest left. With no figures the queue keeps loadscope's order."""
            costs = read_durations(durations_path(config))
            if not costs:
                return
            known = sorted(costs[n] for n in self.collection or () if n in costs)
            unknown = known[len(known) // 2] if known else 0.0
            units = sorted(self.workqueue.items(), key=lambda unit: -sum(
                costs.get(nodeid, unknown) for nodeid in unit[1]))
            self.workqueue.clear()
            self.workqueue.update(units)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return SpreadLoadScopeScheduling(config, log)
