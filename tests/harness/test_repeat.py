"""`--repeat N`: each repeat its own item; flaky (k of N failed) told from plain failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster_probes import subprocess_env

from harness.repeat import RepeatCount, base_nodeid, count_repeats, repeat_id, repeat_of

# A test that fails on its second run only: the count lives in a file, so it holds across
# repeats and across xdist workers.
FLAKY_BY_COUNTER = """
from pathlib import Path

COUNTER = Path(__file__).with_name("runs.txt")


def test_second_run_fails():
    runs = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
    COUNTER.write_text(str(runs))
    assert runs != 2, "the second run fails on purpose"


def test_always_fails():
    assert False, "fails every time"


def test_always_passes():
    pass
"""


def run_pytest(tmp_path: Path, reports: Path, *options: str) -> str:
    test_file = tmp_path / "test_generated.py"
    test_file.write_text(FLAKY_BY_COUNTER)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--rootdir", str(tmp_path), "-c", "/dev/null", *options, str(test_file)],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(reports), timeout=180,
    )
    return done.stdout + done.stderr


def test_repeat_ids_round_trip() -> None:
    plain = "tests/x.py::test_a"
    assert base_nodeid(f"{plain}[{repeat_id(2, 3)}]") == plain
    assert base_nodeid(f"{plain}[kill-one-{repeat_id(2, 3)}]") == f"{plain}[kill-one]"
    assert base_nodeid(f"{plain}[{repeat_id(1, 5)}-kill-one]") == f"{plain}[kill-one]"
    assert base_nodeid(f"{plain}[kill-one]") == f"{plain}[kill-one]"
    assert repeat_of(f"{plain}[kill-one-{repeat_id(4, 5)}]") == (4, 5)
    assert repeat_of(f"{plain}[kill-one]") is None
    assert repeat_of(plain) is None


def test_counts_over_hand_made_reports() -> None:
    t = "t.py::test_x"
    reports = [
        # repeat 1 passes, 2 fails in its call, 3 fails in teardown after a passing call
        (f"{t}[repeat-1-of-3]", "setup", "passed"), (f"{t}[repeat-1-of-3]", "call", "passed"),
        (f"{t}[repeat-1-of-3]", "teardown", "passed"),
        (f"{t}[repeat-2-of-3]", "setup", "passed"), (f"{t}[repeat-2-of-3]", "call", "failed"),
        (f"{t}[repeat-2-of-3]", "teardown", "passed"),
        (f"{t}[repeat-3-of-3]", "call", "passed"), (f"{t}[repeat-3-of-3]", "teardown", "failed"),
        # another test: every repeat fails (one in setup: no call report at all)
        ("t.py::test_y[repeat-1-of-2]", "setup", "failed"),
        ("t.py::test_y[repeat-2-of-2]", "call", "failed"),
        # a test skipped in its setup, and one that was not repeated
        ("t.py::test_s[repeat-1-of-2]", "setup", "skipped"),
        ("t.py::test_s[repeat-2-of-2]", "setup", "skipped"),
        ("t.py::test_plain", "call", "failed"),
    ]
    counts = count_repeats(reports)
    assert set(counts) == {t, "t.py::test_y", "t.py::test_s"}
    x = counts[t]
    assert (x.failed, x.passed, x.verdict) == (2, 1, "flaky")
    assert x.describe() == "flaky 2 of 3 failed"
    y = counts["t.py::test_y"]
    assert (y.failed, y.passed, y.verdict, y.describe()) == (2, 0, "failed", "failed 2 of 2")
    assert counts["t.py::test_s"].verdict == "skipped"
    steady = RepeatCount(3, {1: "passed", 2: "passed", 3: "passed"})
    assert (steady.verdict, steady.describe()) == ("passed", "passed 3 of 3")


def test_repeat_three_reports_the_flaky_test(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports, "--repeat", "3")
    assert "4 failed, 5 passed" in output, output  # 1 + 3 failures, 2 + 0 + 3 passes
    assert "flaky 1 of 3 failed: test_generated.py::test_second_run_fails" in output, output
    assert "failed 3 of 3: test_generated.py::test_always_fails" in output, output
    assert "1 test(s) passed (or skipped) in every repeat" in output, output
    assert "test_second_run_fails[repeat-2-of-3] FAILED" in output or (
        "FAILED test_generated.py::test_second_run_fails[repeat-2-of-3]" in output
    ), output


def test_repeats_spread_over_xdist_workers(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports, "--repeat", "3", "-n", "2",
                        "--dist", "loadscope")
    assert "4 failed, 5 passed" in output, output
    assert "flaky 1 of 3 failed: test_generated.py::test_second_run_fails" in output, output
    assert "failed 3 of 3: test_generated.py::test_always_fails" in output, output


def test_no_repeat_section_without_the_option(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports)
    assert "1 failed, 2 passed" in output, output
    assert "repeats (--repeat" not in output, output


def test_a_repeat_count_below_one_is_refused(tmp_path: Path, isolated_reports: Path) -> None:
    output = run_pytest(tmp_path, isolated_reports, "--repeat", "0")
    assert "--repeat takes a count of 1 or more, not 0" in output, output


def test_the_page_counts_the_flaky_test(tmp_path: Path, isolated_reports: Path) -> None:
    from harness.report.html import render
    from harness.report.model import build, load_results

    results = tmp_path / "allure"
    run_pytest(tmp_path, isolated_reports, "--repeat", "3", f"--alluredir={results}")
    report = build(*load_results([results]), [results])
    cells = {row.check_id: next(iter(row.cells.values())) for row in report.rows}
    flaky = cells["other:test_second_run_fails"]
    assert (flaky.outcome, flaky.failed, flaky.attempts) == ("flaky", 1, 3), flaky.detail
    assert cells["other:test_always_fails"].outcome == "fail"
    assert cells["other:test_always_passes"].outcome == "pass"
    page = render(report, tmp_path / "page.html")
    assert ">flaky 1 of 3</a>" in page
    assert "flaky 1 of 3 failed (passed and failed in different attempts)" in page
