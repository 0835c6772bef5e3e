"""`--repeat N`: run each selected test N times and tell flaky tests from plain failures.

Each repeat is its own test item (a parametrization whose id ends `repeat-<i>-of-<N>`), so
the repeats spread over pytest-xdist workers like any parametrized test (with `--dist
loadscope` the repeats of a test that uses a module-scoped cluster stay with their module's
worker; the others spread, see harness.scheduling). The
controller (or a plain run) collects every repeat's reports and, in the terminal summary,
calls a test that failed in some repeats and passed in others "flaky k of N" and a test that
failed in all N a plain failure. The HTML report counts the same attempts per cell
(harness.report.model.merge_outcomes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

REPEAT_PARAM = "hsc_repeat"
_REPEAT_ID = re.compile(r"repeat-(\d+)-of-(\d+)")
# The repeat piece after other parameters' ids, or first of them.
_AFTER = re.compile(r"-repeat-\d+-of-\d+(?=-|$)")
_FIRST = re.compile(r"^repeat-\d+-of-\d+(?:-|$)")


def repeat_id(index: int, total: int) -> str:
    """The id piece of repeat `index` (1-based) of `total`."""
    return f"repeat-{index}-of-{total}"


def base_nodeid(nodeid: str) -> str:
    """The test a repeat belongs to: its node id without the repeat's id piece."""
    head, bracket, params = nodeid.partition("[")
    if not bracket or not params.endswith("]"):
        return nodeid
    inner = params[:-1]
    stripped = _AFTER.sub("", inner, count=1)
    if stripped == inner:
        stripped = _FIRST.sub("", inner, count=1)
    return f"{head}[{stripped}]" if stripped else head


def repeat_of(nodeid: str) -> tuple[int, int] | None:
    """(index, total) of a repeat's node id, None for a test that is not repeated."""
    found = _REPEAT_ID.search(nodeid.partition("[")[2])
    return (int(found.group(1)), int(found.group(2))) if found else None


@dataclass
class RepeatCount:
    """What the repeats of one test did: repeat index -> "passed" | "failed" | "skipped"."""

    total: int
    outcomes: dict[int, str] = field(default_factory=dict)

    def record(self, index: int, outcome: str) -> None:
        # A repeat is failed if any of its phases failed (setup, call or teardown).
        if self.outcomes.get(index) != "failed":
            self.outcomes[index] = outcome

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o == "failed")

    @property
    def passed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o == "passed")

    @property
    def verdict(self) -> str:
        """"flaky" (failed in some repeats, passed in others), "failed" (in every repeat that
        ran), "passed" (in every repeat that ran) or "skipped" (no repeat ran)."""
        if self.failed and self.passed:
            return "flaky"
        if self.failed:
            return "failed"
        return "passed" if self.passed else "skipped"

    def describe(self) -> str:
        """"flaky 1 of 3 failed", "failed 3 of 3", "passed 3 of 3" or "skipped"."""
        ran = self.failed + self.passed
        if self.verdict == "flaky":
            return f"flaky {self.failed} of {ran} failed"
        if self.verdict == "failed":
            return f"failed {self.failed} of {ran}"
        return f"passed {self.passed} of {ran}" if ran else "skipped"


def count_repeats(reports: Iterable[tuple[str, str, str]]) -> dict[str, RepeatCount]:
    """(node id, phase, outcome) of every phase report -> each repeated test's counts.

    Phase and outcome are pytest's ("setup" | "call" | "teardown"; "passed" | "failed" |
    "skipped"): a repeat counts as failed if any phase failed, else as its call's outcome (or
    skipped, if its setup skipped). Tests whose node ids carry no repeat piece are left out.
    """
    counts: dict[str, RepeatCount] = {}
    for nodeid, phase, outcome in reports:
        which = repeat_of(nodeid)
        if which is None or not (phase == "call" or outcome in ("failed", "skipped")):
            continue
        index, total = which
        counts.setdefault(base_nodeid(nodeid), RepeatCount(total)).record(index, outcome)
    return counts


def _repeats(config: pytest.Config) -> int:
    value = config.getoption("repeat", default=1)
    return 1 if value is None else int(value)


class RepeatTally:
    """Every repeat's phase reports, gathered where the terminal summary is written (the xdist
    controller receives each worker's reports through the same hook)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reports: list[tuple[str, str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.append((report.nodeid, report.when or "", report.outcome))

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        counts = count_repeats(self.reports)
        if hasattr(config, "workerinput") or not counts:
            return
        terminalreporter.section(f"repeats (--repeat {self.total})")
        order = {"flaky": 0, "failed": 1, "passed": 2, "skipped": 3}
        same = 0
        for nodeid, count in sorted(counts.items(), key=lambda kv: (order[kv[1].verdict], kv[0])):
            if count.verdict in ("passed", "skipped"):
                same += 1
                continue
            colour = {"yellow": True} if count.verdict == "flaky" else {"red": True}
            terminalreporter.write_line(f"{count.describe()}: {nodeid}", **colour)
        if same:
            terminalreporter.write_line(f"{same} test(s) passed (or skipped) in every repeat")


def pytest_configure(config: pytest.Config) -> None:
    total = _repeats(config)
    if total < 1:
        raise pytest.UsageError(f"--repeat takes a count of 1 or more, not {total}")
    if total > 1 and not hasattr(config, "workerinput"):
        config.pluginmanager.register(RepeatTally(total), "hstream-conformance-repeat-tally")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    total = _repeats(metafunc.config)
    if total <= 1:
        return
    metafunc.fixturenames.append(REPEAT_PARAM)
    metafunc.parametrize(
        REPEAT_PARAM,
        range(1, total + 1),
        ids=[repeat_id(i, total) for i in range(1, total + 1)],
    )
