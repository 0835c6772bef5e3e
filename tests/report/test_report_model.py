"""The report's data model on hand-made allure result files: results → matrix cells."""

from __future__ import annotations

import json

import pytest

from harness.report.html import render
from harness.report.model import build, load_results
from harness.report.plots import fault_windows, membership_timeline


def cell(report, check_id: str, column: str):
    [row] = [r for r in report.rows if r.check_id == check_id]
    return row.cells[column]


def test_outcomes_per_cell(tmp_path, result):
    d = tmp_path / "run1"
    result(d, "test_ok", "passed", check="api.append.record-ids")
    result(
        d,
        "test_bad",
        "failed",
        check="api.append.tail",
        message="AssertionError: tail {batchId: 3}, last appended batch 4",
    )
    result(
        d,
        "test_dev",
        "skipped",
        check="api.lookup.key",
        client="python",
        message="XFAIL known python deviation: caches owners forever",
    )
    result(
        d,
        "test_erl",
        "skipped",
        check="api.lookup.key",
        client="erlang",
        message="Skipped: Erlang driver not built: set HSTREAM_ERLANG_DRIVER",
    )
    report = build(*load_results([d]), [d])
    assert cell(report, "api.append.record-ids", "reference").outcome == "pass"
    failed = cell(report, "api.append.tail", "reference")
    assert failed.outcome == "fail"
    assert "last appended batch 4" in failed.detail
    deviation = cell(report, "api.lookup.key", "reference / python")
    assert deviation.outcome == "deviation" and "caches owners forever" in deviation.detail
    skipped = cell(report, "api.lookup.key", "reference / erlang")
    assert skipped.outcome == "skipped" and "HSTREAM_ERLANG_DRIVER" in skipped.detail
    assert report.counts() == {"pass": 1, "fail": 1, "deviation": 1, "skipped": 1}
    [row] = [r for r in report.rows if r.check_id == "api.append.tail"]
    assert row.section == "§1" and "GetTailRecordId" in row.asserts


def test_flaky_when_attempts_disagree_and_runs_merge(tmp_path, result):
    first, second = tmp_path / "a", tmp_path / "b"
    result(first, "test_t", "failed", check="api.readers.latest", stop=1000, message="boom")
    result(second, "test_t", "passed", check="api.readers.latest", stop=5000)
    result(second, "test_t", "passed", check="api.readers.latest", target="hstream:img")
    report = build(*load_results([first, second]), [first, second])
    assert report.columns == ["hstream:img", "reference"]
    assert cell(report, "api.readers.latest", "reference").outcome == "flaky"
    assert cell(report, "api.readers.latest", "hstream:img").outcome == "pass"


def test_tests_without_catalogue_id_are_rows_of_their_area(tmp_path, result):
    d = tmp_path / "r"
    result(d, "test_something[x]", "passed")
    report = build(*load_results([d]), [d])
    assert [r.check_id for r in report.rows] == ["api:test_something"]


def test_missing_results_dir_is_a_clear_error(tmp_path, result):
    with pytest.raises(FileNotFoundError, match="run a suite first"):
        load_results([tmp_path / "nothing"])


def test_page_embeds_evidence_and_plots(tmp_path, result):
    d = tmp_path / "r"
    d.mkdir()
    t0 = 10**12
    ops = [
        {"index": 0, "process": "nemesis", "type": "invoke", "f": "kill", "time": t0},
        {
            "index": 1,
            "process": "nemesis",
            "type": "ok",
            "f": "kill",
            "time": t0 + 10**9,
            "value": {"down": [2]},
        },
        {
            "index": 2,
            "process": "probe",
            "type": "ok",
            "f": "view",
            "time": t0 + 2 * 10**9,
            "value": {"observer": 1, "view": {"1": "alive", "2": "suspect"}},
        },
        {
            "index": 3,
            "process": "probe",
            "type": "ok",
            "f": "view",
            "time": t0 + 4 * 10**9,
            "value": {"observer": 1, "view": {"1": "alive", "2": "dead"}},
        },
        {
            "index": 4,
            "process": "nemesis",
            "type": "ok",
            "f": "restart",
            "time": t0 + 6 * 10**9,
            "value": {"up": [2]},
        },
    ]
    (d / "h-attachment.jsonl").write_text("\n".join(json.dumps(op) for op in ops))
    result(
        d,
        "test_kill",
        "failed",
        check="api.cluster.describe",
        message="3 nodes listed",
        attachments=[{"name": "history", "source": "h-attachment.jsonl", "type": "text/plain"}],
    )
    report = build(*load_results([d]), [d])
    page = render(report, tmp_path / "conformance.html")
    assert "api.cluster.describe" in page and "3 nodes listed" in page
    assert page.count("<svg") >= 1 and "views: test_kill" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert fault_windows(ops, t0) == [(1.0, 6.0, "kill")]
    assert "suspect" not in membership_timeline([]) and membership_timeline(ops)


def test_defect_runs_are_their_own_column(tmp_path, result):
    """A healthy run and a defect run merged: the defect's failures stay red, not flaky."""
    healthy, broken = tmp_path / "healthy", tmp_path / "broken"
    result(healthy, "test_order", "passed", check="api.read.stream")
    result(
        broken, "test_order", "failed", check="api.read.stream", defects="reorder-reads",
        message="AssertionError: ReadStream per shard {1: [3, 2, 1]}, want {1: [1, 2, 3]}",
    )
    report = build(*load_results([healthy, broken]), [healthy, broken])
    assert report.columns == ["reference", "reference + defect reorder-reads"]
    assert cell(report, "api.read.stream", "reference").outcome == "pass"
    red = cell(report, "api.read.stream", "reference + defect reorder-reads")
    assert red.outcome == "fail" and "want {1: [1, 2, 3]}" in red.detail


def test_page_leads_with_what_failed_and_lists_its_runs(tmp_path, result):
    run = tmp_path / "run"
    result(run, "test_tail", "passed", check="api.append.tail")
    result(
        run, "test_order", "failed", check="api.read.stream", defects="reorder-reads",
        message="AssertionError: ReadStream per shard {1: [3, 2, 1]}, want {1: [1, 2, 3]}",
    )
    (run / "s1-hsc-run.json").write_text(json.dumps({
        "session": "hsc-test-1", "target": "reference", "backend": "local", "nodes": 3,
        "toxiproxy": "embedded", "seed": 7, "defects": ["reorder-reads"], "started": 1.7e9,
        "duration_s": 12.5, "exit_status": 1, "args": ["suites/api"],
    }))
    report = build(*load_results([run]), [run])
    page = render(report, tmp_path / "page.html")
    attention = page.index("Needs attention (1)")
    assert attention < page.index('id="matrix"'), "failures must come before the matrix"
    assert "want {1: [1, 2, 3]}" in page[attention:page.index('id="runs"')]
    assert "hsc-test-1" in page and "some failed" in page and "12.5 s" in page
    # Catalogue checks of the areas that ran, without a result, are named.
    assert "api.append.trim" in page and "no result here" in page


def test_target_findings_are_known_deviations_of_their_profile(tmp_path, result):
    """A check ending in harness.findings' xfail: allure writes "XFAIL <reason>", a blank line
    and the exception again. The cell is a known deviation carrying the finding, in a column
    of the profile it was seen under, next to the protocol run's pass."""
    protocol, real = tmp_path / "protocol", tmp_path / "real"
    reason = (
        "known deviation: reference (hstream-0.20): without TLS a "
        "refused call is CANCELLED, not UNAUTHENTICATED (HStreamDB hs-grpc "
        "include/hsgrpc/auth.hpp:37-53) [auth_cancels; observed: no token: CANCELLED]"
    )
    result(protocol, "test_token_authentication", "passed", check="api.auth.token")
    result(
        real, "test_token_authentication", "skipped", check="api.auth.token",
        target="reference (hstream-0.20)",  # the plugin's target label under that profile
        message=f"XFAIL {reason}\n\n_pytest.outcomes.XFailed: {reason}",
    )
    report = build(*load_results([protocol, real]), [protocol, real])
    assert report.columns == ["reference", "reference (hstream-0.20)"]
    assert cell(report, "api.auth.token", "reference").outcome == "pass"
    finding = cell(report, "api.auth.token", "reference (hstream-0.20)")
    assert finding.outcome == "deviation"
    assert finding.detail == reason, "the cell carries the finding, once, without XFAIL"
    page = render(report, tmp_path / "page.html")
    assert "known deviation" in page and "auth.hpp:37-53" in page
    assert "reference (hstream-0.20)" in page
