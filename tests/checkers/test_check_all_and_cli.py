"""check_all composition and the `python -m harness.checkers` command on saved histories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import HarnessError
from harness.checkers import CheckOptions, applicable_checkers, check_all
from harness.history import write_ops


def _valid_history(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).read([("a", (1, 1, 0))], final=True)
    return hb.ops

def _lossy_history(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(1).read([("a", (1, 1, 0))], final=True)
    return hb.ops

def test_applicable_checkers_follow_the_ops(hb):
    ops = _valid_history(hb)
    assert applicable_checkers(ops) == ["stream-set", "order"]
    hb.view("1", {"1": "alive"})
    hb.fetch([], "c1")
    assert applicable_checkers(hb.ops) == ["stream-set", "order", "subscription", "membership"]
    assert applicable_checkers([]) == []

def test_merged_verdict_false_beats_unknown_beats_true(hb):
    report = check_all(_lossy_history(hb))
    assert report.valid is False
    assert report.results["stream-set"].valid is False
    assert report.results["order"].valid is True
    assert "lost=1" in report.table() and "INVALID" in report.table()
    json.dumps(report.to_json())

def test_options_reach_the_checkers(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).read([("a", (1, 1, 0)), ("a", (1, 1, 0))], final=True)
    assert check_all(hb.ops).valid is True
    assert check_all(hb.ops, {"exactly_once": True}).valid is False
    assert check_all(hb.ops, CheckOptions(checkers=["order"])).results.keys() == {"order"}

def test_unknown_names_are_one_clear_error(hb):
    with pytest.raises(HarnessError, match="unknown checker option.*exactly_one"):
        check_all([], {"exactly_one": True})
    with pytest.raises(HarnessError, match="unknown checker.*choose from stream-set"):
        check_all([], {"checkers": ["linearizability"]})

def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.checkers", *args],
        capture_output=True, text=True, timeout=120,
    )

def test_cli_exit_status_and_table(hb, tmp_path):
    valid = write_ops(_valid_history(hb), tmp_path / "valid.jsonl")
    done = _run(str(valid))
    assert done.returncode == 0, done.stderr
    assert "verdict: VALID" in done.stdout and "stream-set" in done.stdout

def test_cli_invalid_history_exits_1_and_writes_json(tmp_path, hb):
    lossy = write_ops(_lossy_history(hb), tmp_path / "lossy.jsonl")
    out = tmp_path / "result.json"
    done = _run(str(lossy), "--checker", "stream-set", "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lost=1" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["valid"] is False
    assert saved["results"]["stream-set"]["anomalies"]["lost"][0]["payload_id"] == "b"

def test_cli_unusable_input_is_one_line_exit_2(tmp_path):
    missing = _run(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    bad = _run(str(junk))
    assert bad.returncode == 2 and "junk.jsonl:1" in bad.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = _run(str(empty))
    assert nothing.returncode == 2 and "no ops any checker judges" in nothing.stderr


def test_registered_as_hstream_conformance_check(hb, tmp_path):
    lossy = write_ops(_lossy_history(hb), tmp_path / "lossy.jsonl")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
         "check", str(lossy)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verdict: INVALID" in done.stdout
