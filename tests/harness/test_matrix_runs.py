"""The defect matrix run N times: runs that caught, median runs-to-catch, strict controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.matrix.defects import (
    Outcome,
    control_verdict,
    healthy_and_all_caught,
    merge_runs,
    run_times,
    table,
    write_json,
)
from harness.matrix.runs import NEVER, catch_gaps, caught_text, median_runs_to_catch
from harness.report.html import _defect_matrix
from harness.report.model import Report


@pytest.mark.parametrize(
    ("caught", "gaps", "median"),
    [
        ([True, True, True], [1, 1, 1], 1),
        ([False, True, False, True, False], [2, 2], 2),
        ([False, False, True, False, False], [3], 3),
        ([True, False, False, True], [1, 3], 2),  # median of an even count: the mean of two
        ([False, True, True, False, False, False, True], [2, 1, 4], 2),
        ([True, False, False, False, True, True], [1, 4, 1], 1),
        ([False, True, False, False, False, True], [2, 4], 3),
        ([False, True, False, True, False, False, True], [2, 2, 3], 2),
        ([False, False, False, True, True, False, False, False], [4, 1], 2.5),
        ([False, False, False], [], NEVER),
        ([], [], NEVER),
    ],
)
def test_runs_to_catch(caught: list[bool], gaps: list[int], median: float | str) -> None:
    assert catch_gaps(caught) == gaps
    assert median_runs_to_catch(caught) == median


def run(defect: str, *failed_per_run: list[str]) -> Outcome:
    """One row merged from hand-made runs, each failing the tests given."""
    return merge_runs([
        Outcome(defect, selected=2, failed=list(failed), exit_code=1 if failed else 0)
        for failed in failed_per_run
    ])


def test_counts_and_verdicts_over_hand_made_runs() -> None:
    sometimes = run("stale-owner", [], ["t::a"], [], ["t::a", "t::b"])
    assert sometimes.caught and sometimes.run_caught == [False, True, False, True]
    assert sometimes.failed == ["t::a", "t::b"]
    assert caught_text(sometimes.run_caught) == "2 of 4"
    healthy = run("healthy", [], [], [], [])
    assert healthy.passed
    # Caught in some run is caught: the row's figures say how often.
    assert healthy_and_all_caught([sometimes, healthy])
    never = run("no-refute", [], [], [], [])
    assert not never.caught and median_runs_to_catch(never.run_caught) == NEVER
    assert not healthy_and_all_caught([never, healthy])
    # A healthy run failing in one of the four is not clean.
    assert not healthy_and_all_caught([sometimes, run("healthy", [], [], ["t::a"], [])])
    # A control must miss in every run: caught by the old faults once fails the matrix.
    sometimes.control = run("stale-owner", [], [], ["t::old"], [])
    assert control_verdict(sometimes) == "caught too (1 of 4)"
    assert not healthy_and_all_caught([sometimes, healthy])
    sometimes.control = run("stale-owner", [], [], [], [])
    assert control_verdict(sometimes) == "missed"
    assert healthy_and_all_caught([sometimes, healthy])
    lines = table([sometimes, never, healthy]).splitlines()
    assert lines[0].split()[:6] == ["defect", "verdict", "old", "faults", "caught", "in"]
    assert "2 of 4" in lines[1] and "  2  " in lines[1] and "caught" in lines[1], lines[1]
    assert "0 of 4" in lines[2] and NEVER in lines[2] and "MISSED" in lines[2], lines[2]


def test_json_and_page_show_the_figures(tmp_path: Path) -> None:
    sometimes = run("stale-owner", [], ["t::a"], [], ["t::a"])
    sometimes.control = run("stale-owner", [], [], [], [])
    path = write_json([sometimes, run("healthy", [], [], [], [])], tmp_path)
    rows = json.loads(path.read_text())["rows"]
    assert rows[0]["runs"] == 4 and rows[0]["caught_runs"] == 2
    assert rows[0]["run_caught"] == [False, True, False, True]
    assert rows[0]["median_runs_to_catch"] == 2
    assert rows[0]["control"]["missed"] and rows[0]["control"]["missed_runs"] == 4
    page = _defect_matrix(Report(runs=[], results=[], columns=[], rows=[],
                                 results_dirs=[tmp_path]))
    assert "<th>runs that caught it</th><th>median runs to catch</th>" in page
    assert "<td>missed in all 4</td><td>2 of 4</td><td>2</td>" in page, page
    assert "clean in all 4" in page


# A check that fails on its second run only (a counter file), so three runs catch it once.
SECOND_RUN_FAILS = """
from pathlib import Path

COUNTER = Path(__file__).with_name("runs.txt")


def test_second_run_fails():
    runs = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(runs))
    assert runs != 2, "anomaly: the second run fails on purpose"
"""


@pytest.mark.parametrize("separate", [False, True], ids=["one-pytest-repeats", "separate"])
def test_three_real_runs_of_a_selection(
    separate: bool, tmp_path: Path, isolated_reports: Path
) -> None:
    # isolated_reports gives the child runs their own reports/ and session
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "test_counter.py").write_text(SECOND_RUN_FAILS)
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_times(3, None, (str(checks / "test_counter.py"),), "second_run", out,
                        ["-c", "/dev/null", "--rootdir", str(checks)], separate=separate)
    assert outcome.run_caught == [False, True, False]
    assert [run.selected for run in outcome.runs] == [1, 1, 1]
    assert caught_text(outcome.run_caught) == "1 of 3"
    assert median_runs_to_catch(outcome.run_caught) == 2
    assert "the second run fails on purpose" in outcome.anomaly
    # The failed test is named as the test, not as its repeat.
    assert [name.split("::")[1] for name in outcome.failed] == ["test_second_run_fails"]
    assert not outcome.passed  # as a healthy or control run it is not clean in all three
    assert [run.passed for run in outcome.runs] == [True, False, True]
    expected = ([f"healthy.run-{i}-of-3.xml" for i in (1, 2, 3)] if separate
                else ["healthy.3-runs.xml"])
    assert sorted(p.name for p in out.glob("*.xml")) == expected


def test_a_run_that_breaks_pytest_is_no_clean_run(tmp_path: Path, isolated_reports: Path) -> None:
    # A selection that does not even collect: no run may pass as clean (a healthy run must
    # not be "clean" because nothing ran).
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "test_broken.py").write_text("import no_such_module_here\n")
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_times(2, None, (str(checks / "test_broken.py"),), "", out,
                        ["-c", "/dev/null", "--rootdir", str(checks)])
    assert outcome.exit_code != 0
    assert not outcome.passed
    assert not any(run.passed for run in outcome.runs)
