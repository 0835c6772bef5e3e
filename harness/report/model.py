"""From allure result files to the report's data: runs, checks and the conformance matrix.

Rows are conformance ids (the catalogue's) or, for tests without one, the test's name in its
suite area; columns are what a reader compares — target × client (× backend when several
ran). A cell merges every result of that row and column across runs:

Columns carry the seeded defects a run switched on, so a healthy run and a defect run
merged into one page sit side by side.

* pass — every attempt passed;
* fail — the last attempt failed (or broke) and none passed;
* flaky — both passing and failing attempts, counted: "flaky k of N" (k of the N attempts
  that passed or failed; `--repeat N` makes N attempts of every test);
* deviation — a strict xfail: a known deviation of an official client, or a finding of the
  target (harness.findings: "<target label>: <finding> (HStreamDB <source>)"), shown with it;
* vacuous — the faults never reached what the check is about (harness.checkers.reach):
  neither pass nor fail, shown with what was missed;
* skipped — with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.catalogue import CATALOGUE

RUN_FILE_SUFFIX = "-hsc-run.json"


@dataclass
class Attachment:
    name: str
    path: Path
    type: str


@dataclass
class TestResult:
    """One allure result: one attempt of one test."""

    uuid: str
    name: str
    full_name: str
    status: str  # passed | failed | broken | skipped
    message: str
    trace: str
    labels: dict[str, str]
    attachments: list[Attachment]
    start_ms: int
    stop_ms: int
    parameters: dict[str, str]

    @property
    def outcome(self) -> str:
        """pass / fail / deviation / skipped."""
        if self.status == "passed":
            return "pass"
        if self.status in ("failed", "broken"):
            return "fail"
        if self.status == "skipped" and is_vacuous(self.message):
            return "vacuous"
        if (
            self.message.lower().startswith("xfail")
            or "known" in self.message
            and "deviation" in self.message
        ):
            return "deviation"
        return "skipped"

    @property
    def check_id(self) -> str:
        return self.labels.get("conformance_id") or f"{self.area}:{self.name.split('[')[0]}"

    @property
    def area(self) -> str:
        if "conformance_id" in self.labels:
            return ".".join(self.labels["conformance_id"].split(".")[:2])
        return self.labels.get("suite_area") or self.labels.get("parentSuite") or "other"

    @property
    def column(self) -> str:
        # A run with seeded defects is its own column: merged with a healthy run of the same
        # target it would otherwise turn every check the defect breaks into "flaky".
        target = self.labels.get("target", "?")
        if self.labels.get("defects"):
            target += f" + defect {self.labels['defects']}"
        parts = [target]
        if self.labels.get("client"):
            parts.append(self.labels["client"])
        return " / ".join(parts)


@dataclass
class Cell:
    outcome: str
    results: list[TestResult]
    detail: str = ""
    # Of the attempts that passed or failed (repeats with --repeat, reruns, merged runs),
    # how many failed: a flaky cell shows "flaky <failed> of <attempts>".
    failed: int = 0
    attempts: int = 0


@dataclass
class Row:
    check_id: str
    area: str
    section: str
    asserts: str
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Report:
    runs: list[dict[str, Any]]
    results: list[TestResult]
    columns: list[str]
    rows: list[Row]
    results_dirs: list[Path]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            for cell in row.cells.values():
                out[cell.outcome] = out.get(cell.outcome, 0) + 1
        return out


def _labels(raw: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        name, value = item.get("name"), item.get("value")
        if isinstance(name, str) and isinstance(value, str) and name not in labels:
            labels[name] = value
    return labels


def load_result(path: Path) -> TestResult:
    data = json.loads(path.read_text())
    details = data.get("statusDetails") or {}
    attachments = [
        Attachment(a.get("name", ""), path.parent / a["source"], a.get("type", ""))
        for a in _all_attachments(data)
        if a.get("source")
    ]
    return TestResult(
        uuid=data.get("uuid", path.stem),
        name=data.get("name", ""),
        full_name=data.get("fullName", data.get("name", "")),
        status=data.get("status", "unknown"),
        message=(details.get("message") or "").strip(),
        trace=details.get("trace") or "",
        labels=_labels(data.get("labels") or []),
        attachments=attachments,
        start_ms=int(data.get("start") or 0),
        stop_ms=int(data.get("stop") or 0),
        parameters={
            p.get("name", ""): str(p.get("value", "")) for p in data.get("parameters") or []
        },
    )


def _all_attachments(data: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Attachments of the test and of its steps (allure nests them)."""
    yield from data.get("attachments") or []
    for step in data.get("steps") or []:
        yield from _all_attachments(step)


def load_results(dirs: Iterable[Path]) -> tuple[list[TestResult], list[dict[str, Any]]]:
    results: list[TestResult] = []
    runs: list[dict[str, Any]] = []
    for directory in dirs:
        if not directory.is_dir():
            raise FileNotFoundError(
                f"no allure results at {directory}: run a suite first (nox -s conformance)"
            )
        for path in sorted(directory.glob("*-result.json")):
            results.append(load_result(path))
        for path in sorted(directory.glob(f"*{RUN_FILE_SUFFIX}")):
            runs.append(json.loads(path.read_text()))
    return results, runs


def is_vacuous(message: str) -> bool:
    """A skip whose reason says the run was vacuous (harness.checkers.reach.require_reached;
    pytest or allure may put "Skipped: " in front)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first.removeprefix("Skipped: ").startswith("vacuous:")


def finding_of(message: str) -> str:
    """The finding a known deviation carries: allure writes "XFAIL <reason>", then a blank
    line and the exception again; the reason is the finding."""
    reason = message.split("\n\n", 1)[0].strip()
    return reason[len("XFAIL") :].strip() if reason.upper().startswith("XFAIL") else reason


def merge_outcomes(results: list[TestResult]) -> Cell:
    ordered = sorted(results, key=lambda r: r.stop_ms)
    outcomes = {r.outcome for r in ordered}
    if outcomes == {"pass"}:
        return Cell("pass", ordered)
    if "pass" in outcomes and "fail" in outcomes:
        failures = sum(1 for r in ordered if r.outcome == "fail")
        attempts = failures + sum(1 for r in ordered if r.outcome == "pass")
        return Cell("flaky", ordered, f"flaky {failures} of {attempts} failed (passed and "
                    "failed in different attempts)", failures, attempts)
    if "fail" in outcomes:
        failed = [r for r in ordered if r.outcome == "fail"][-1]
        return Cell("fail", ordered, failed.message.splitlines()[0] if failed.message else "")
    if "vacuous" in outcomes:  # never pass: an attempt that reached nothing proves nothing
        vacuous = [r for r in ordered if r.outcome == "vacuous"][-1]
        return Cell("vacuous", ordered, vacuous.message.removeprefix("Skipped: ")[:300])
    if "deviation" in outcomes:
        finding = next(r.message for r in ordered if r.outcome == "deviation")
        return Cell("deviation", ordered, finding_of(finding))
    if "pass" in outcomes:  # passes mixed with skips (e.g. one client skipped a combination)
        return Cell("pass", ordered)
    reason = next((r.message for r in ordered if r.message), "")
    return Cell("skipped", ordered, reason)


def build(results: list[TestResult], runs: list[dict[str, Any]], dirs: list[Path]) -> Report:
    by_row: dict[str, dict[str, list[TestResult]]] = {}
    areas: dict[str, str] = {}
    for result in results:
        by_row.setdefault(result.check_id, {}).setdefault(result.column, []).append(result)
        areas[result.check_id] = result.area
    columns = sorted({r.column for r in results})
    rows = []
    for check_id in sorted(by_row, key=lambda c: (areas[c], c)):
        known = CATALOGUE.get(check_id)
        row = Row(
            check_id=check_id,
            area=areas[check_id],
            section=known.section if known else "",
            asserts=known.asserts if known else "",
        )
        for column, cell_results in by_row[check_id].items():
            row.cells[column] = merge_outcomes(cell_results)
        rows.append(row)
    return Report(runs=runs, results=results, columns=columns, rows=rows, results_dirs=dirs)
