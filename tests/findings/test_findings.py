"""harness.findings: a target's documented departure is its finding (an xfail naming target,
version, finding and source); anything else a check sees is a pass or a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.findings import FINDINGS, Findings, finding_text, judge, lookup, target_finding
from harness.report.html import render
from harness.report.model import build, load_results
from harness.targets.settings import (
    HSTREAM_DEVIATIONS,
    GossipSettings,
    TargetSettings,
    hstream_settings,
)

XFAIL = pytest.xfail.Exception
GOSSIP = GossipSettings(probe_interval_s=1.0, roundtrip_timeout_s=0.5, gossip_interval_s=0.2)


def reference(profile: str, deviations: dict[str, str] | None = None) -> TargetSettings:
    return TargetSettings(
        target="reference",
        version=f"profile {profile}",
        profile=profile,
        gossip=GOSSIP,
        tunable=True,
        deviations=deviations or {},
    )


PROTOCOL = reference("protocol")
REAL = hstream_settings("v0.20.3")
SOURCE = HSTREAM_DEVIATIONS["auth_cancels"]


def test_every_documented_departure_has_a_text():
    # The registry and the targets' settings cannot drift apart: every id a target may
    # report has words for the report.
    assert set(HSTREAM_DEVIATIONS) <= set(FINDINGS)
    for finding in FINDINGS.values():
        assert finding.text and finding.departure, finding


def test_unknown_finding_is_a_clear_error():
    with pytest.raises(KeyError, match="not in harness/findings.py"):
        lookup("no_such_finding")


def test_finding_names_target_version_and_source():
    text = finding_text(REAL, "auth_cancels")
    assert text.startswith("hstream v0.20.3: ")
    assert FINDINGS["auth_cancels"].text in text
    assert text.endswith(f"(HStreamDB {SOURCE})")


def test_target_finding_is_an_xfail_carrying_the_finding():
    with pytest.raises(XFAIL) as raised:
        target_finding(REAL, "auth_cancels", "DescribeCluster with no token: CANCELLED")
    reason = raised.value.msg
    assert reason.startswith("known deviation: hstream v0.20.3: ")
    assert finding_text(REAL, "auth_cancels") in reason
    assert "observed: DescribeCluster with no token: CANCELLED" in reason


def test_an_undocumented_departure_is_a_failure():
    with pytest.raises(AssertionError, match="reference \\(protocol\\) does not document"):
        target_finding(PROTOCOL, "auth_cancels", "CANCELLED")


def test_judge_passes_what_meets_the_protocol():
    judge(
        PROTOCOL,
        "admin_parse_error_internal",
        "INVALID_ARGUMENT",
        conforms=True,
        departs=False,
        protocol="INVALID_ARGUMENT",
    )


def test_judge_reports_the_documented_departure():
    hstream_profile = reference("hstream-0.20", {"admin_parse_error_internal": "Admin.hs:1"})
    with pytest.raises(XFAIL) as raised:
        judge(
            hstream_profile,
            "admin_parse_error_internal",
            "failed INTERNAL",
            conforms=False,
            departs=True,
            protocol="INVALID_ARGUMENT",
        )
    assert "reference (hstream-0.20): " in raised.value.msg
    assert "(HStreamDB Admin.hs:1)" in raised.value.msg


def test_judge_fails_a_departure_the_target_does_not_document():
    with pytest.raises(AssertionError) as raised:
        judge(
            PROTOCOL,
            "auth_cancels",
            "no token: CANCELLED",
            conforms=False,
            departs=True,
            protocol="UNAUTHENTICATED",
        )
    message = str(raised.value)
    assert "want UNAUTHENTICATED (protocol)" in message and "does not document" in message


def test_judge_fails_what_is_neither_naming_both():
    with pytest.raises(AssertionError) as raised:
        judge(
            REAL,
            "auth_cancels",
            "no token: PERMISSION_DENIED",
            conforms=False,
            departs=False,
            protocol="UNAUTHENTICATED",
        )
    message = str(raised.value)
    assert "want UNAUTHENTICATED (protocol)" in message
    assert "CANCELLED (the departure hstream v0.20.3 documents" in message


def test_judge_is_strict_when_the_documented_departure_is_not_seen():
    # As a strict xfail turns a fixed client into a failure: the settings must follow.
    with pytest.raises(AssertionError, match="settings must follow"):
        judge(
            REAL,
            "auth_cancels",
            "no token: UNAUTHENTICATED",
            conforms=True,
            departs=False,
            protocol="UNAUTHENTICATED",
        )


def test_findings_are_reported_once_the_check_is_done():
    findings = Findings(REAL)
    findings.judge(
        "auth_cancels",
        "no token: CANCELLED",
        conforms=False,
        departs=True,
        protocol="UNAUTHENTICATED",
    )
    findings.judge(
        "auth_cancels",
        "no token: CANCELLED",
        conforms=False,
        departs=True,
        protocol="UNAUTHENTICATED",
    )
    findings.judge(
        "admin_parse_error_internal",
        "INTERNAL",
        conforms=False,
        departs=True,
        protocol="INVALID_ARGUMENT",
    )
    with pytest.raises(XFAIL) as raised:
        findings.report()
    reason = raised.value.msg
    assert reason.count("no token: CANCELLED") == 1, "repeated observations are named once"
    assert reason.count("hstream v0.20.3: ") == 2, "each finding names target and version"
    assert "[auth_cancels;" in reason and "[admin_parse_error_internal;" in reason


def test_many_observations_are_cut_short():
    findings = Findings(REAL)
    for call in range(5):
        findings.judge(
            "auth_cancels",
            f"call {call}: CANCELLED",
            conforms=False,
            departs=True,
            protocol="UNAUTHENTICATED",
        )
    with pytest.raises(XFAIL, match="call 2: CANCELLED; 2 more]"):
        findings.report()


def test_no_findings_no_outcome():
    findings = Findings(PROTOCOL)
    findings.judge(
        "auth_cancels", "UNAUTHENTICATED", conforms=True, departs=False, protocol="UNAUTHENTICATED"
    )
    findings.report()  # returns: the check passed


CHECK = """
from harness.findings import judge
from harness.targets.settings import hstream_settings

def test_refusal():
    judge(hstream_settings("v0.20.3"), "auth_cancels", "no token: CANCELLED",
          conforms=False, departs=True, protocol="UNAUTHENTICATED")
"""


def test_report_shows_a_finding_as_a_known_deviation(tmp_path: Path):
    """End to end: a check ending in a finding, run by pytest with allure, is an xfail in
    pytest's summary and a known-deviation cell naming target, version and finding."""
    (tmp_path / "test_check.py").write_text(CHECK)
    results = tmp_path / "allure"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hstream_conformance",
            f"--alluredir={results}",
            "-rx",
            str(tmp_path / "test_check.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 xfailed" in run.stdout, run.stdout
    [raw] = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    assert raw["status"] == "skipped", raw
    report = build(*load_results([results]), [results])
    [row] = report.rows
    [cell] = row.cells.values()
    assert cell.outcome == "deviation"
    assert cell.detail.startswith(f"known deviation: {finding_text(REAL, 'auth_cancels')}")
    page = render(report, tmp_path / "page.html")
    assert "known deviation" in page and FINDINGS["auth_cancels"].text in page
