"""Render a `Report` as one self-contained HTML page (inline CSS, SVG and evidence)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.catalogue import CATALOGUE
from harness.report import plots
from harness.report.model import Attachment, Cell, Report, TestResult

OUTCOME_LABEL = {
    "pass": "pass",
    "fail": "FAIL",
    "flaky": "flaky",
    "deviation": "known deviation",
    "vacuous": "vacuous",
    "skipped": "skipped",
}
INLINE_LIMIT = 256 * 1024  # larger evidence is linked, not embedded
MAX_HISTORIES = 150  # histories drawn on one page; the rest are counted

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px;font-size:22px}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;font-size:13px;color:#cfd6e4}
.facts b{color:#fff;font-weight:600}
main{padding:18px 28px;max-width:1400px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:14px 18px;
margin-bottom:18px}
h2{font-size:17px;margin:0 0 10px}
.pills span{display:inline-block;margin-right:8px;padding:2px 10px;border-radius:12px;
font-weight:600}
table{border-collapse:collapse;width:100%}
h3{font-size:15px;margin:16px 0 6px}
th,td{border-bottom:1px solid #eceef2;padding:4px 8px;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#fff;font-size:12px;color:#5b6475}
tr.area td{background:#eef1f6;font-weight:600;color:#3a4456}
td.id{font-family:ui-monospace,Menlo,monospace;font-size:12.5px;white-space:nowrap}
td.asserts{color:#5b6475;font-size:12.5px}
.badge{display:inline-block;min-width:64px;text-align:center;padding:1px 8px;border-radius:4px;
font-size:12px;font-weight:600;text-decoration:none}
.pass{background:#d7f0e0;color:#1e6b3e}.fail{background:#f7d4d2;color:#9b1c16}
.flaky{background:#fbe7c2;color:#7a4b00}.deviation{background:#e3dcf7;color:#4b2f99}
.skipped{background:#e9ebef;color:#5b6475}
.vacuous{background:#fdf3b0;color:#6b5600}.detail-vacuous{border-color:#c9a800}
details{margin:6px 0}summary{cursor:pointer}
pre{background:#f3f4f7;padding:8px;overflow:auto;max-height:360px;font-size:12px;
white-space:pre-wrap;overflow-wrap:anywhere}
.detail{border-left:4px solid #e2e5ea;padding-left:10px;margin:10px 0}
.detail-fail{border-color:#c8403a}.detail-flaky{border-color:#e0a526}
.detail-deviation{border-color:#6a4fc4}.detail-pass{border-color:#2e9e5b}
.plot{display:block;margin:8px 0;background:#fff;max-width:100%;height:auto}
.plot-group{border-top:1px solid #eceef2;padding-top:6px;margin-top:10px}
.plot-title{font-size:12px;font-weight:600;fill:#1d2430}
.lane,.tick{font-size:9px;fill:#5b6475}.lane{text-anchor:end}
.legend span{margin-right:12px}
ul.attention{margin:4px 0 8px;padding-left:18px}ul.attention li{margin:3px 0}
.back{font-size:12px;font-weight:400;margin-left:10px}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(check_id: str, column: str) -> str:
    return "d-" + "".join(c if c.isalnum() else "-" for c in f"{check_id}-{column}")


def _badge(cell: Cell, href: str) -> str:
    return (
        f'<a class="badge {cell.outcome}" href="#{href}" title="{_esc(cell.detail)}">'
        f"{OUTCOME_LABEL[cell.outcome]}{_attempts(cell)}</a>"
    )


def _attempts(cell: Cell) -> str:
    """" 1 of 3" after a flaky cell's label: how many of its attempts failed."""
    return f" {cell.failed} of {cell.attempts}" if cell.outcome == "flaky" and cell.attempts else ""


def _header(report: Report) -> str:
    runs = report.runs
    targets = sorted(
        {r["target"] for r in runs if r.get("target")}
        | {res.labels["target"] for res in report.results if "target" in res.labels}
    )
    backends = sorted(
        {r["backend"] for r in runs if r.get("backend")}
        | {res.labels["backend"] for res in report.results if "backend" in res.labels}
    )
    seeds = sorted({str(r["seed"]) for r in runs if r.get("seed") is not None})
    proxies = sorted({str(r["toxiproxy"]) for r in runs if r.get("toxiproxy")})
    defects = sorted({d for r in runs for d in r.get("defects") or []})
    started = min((r["started"] for r in runs if r.get("started")), default=None)
    duration = sum(r.get("duration_s") or 0 for r in runs)
    facts = {
        "targets": ", ".join(targets) or "?",
        "backends": ", ".join(backends) or "?",
        "toxiproxy": ", ".join(proxies) or "?",
        "seeds": ", ".join(seeds) or "?",
        "defects": ", ".join(defects) or "none",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)) if started else "?",
        "duration": f"{duration:.0f} s" if duration else "?",
        "runs": str(len(runs) or len(report.results_dirs)),
    }
    items = "".join(f"<span>{k} <b>{_esc(v)}</b></span>" for k, v in facts.items())
    return f'<header><h1>HStreamDB conformance report</h1><div class="facts">{items}</div></header>'


def _summary(report: Report) -> str:
    counts = report.counts()
    pills = "".join(
        f'<span class="{outcome}">{counts.get(outcome, 0)} {OUTCOME_LABEL[outcome]}</span>'
        for outcome in OUTCOME_LABEL
    )
    # What needs a decision comes first: every red or amber cell with its one-line reason.
    attention = [
        (row, column, cell)
        for row in report.rows
        for column, cell in row.cells.items()
        if cell.outcome in ("fail", "flaky", "vacuous")
    ]
    items = "".join(
        f'<li><a class="badge {cell.outcome}" href="#{_anchor(row.check_id, column)}">'
        f"{OUTCOME_LABEL[cell.outcome]}{_attempts(cell)}</a> <code>{_esc(row.check_id)}</code> on "
        f"{_esc(column)}: {_esc(cell.detail[:240])}</li>"
        for row, column, cell in attention
    )
    failed = (
        f"<h3>Needs attention ({len(attention)})</h3><ul class=\"attention\">{items}</ul>"
        if attention
        else "<p>Nothing failed.</p>"
    )
    # Catalogue checks of the areas that ran but with no result: deselected, or not written.
    areas = {row.area for row in report.rows}
    ran = {row.check_id for row in report.rows}
    missing = sorted(c.id for c in CATALOGUE.values() if c.area in areas and c.id not in ran)
    not_run = (
        f"<details><summary>{len(missing)} catalogue "
        f"{'check of these areas has' if len(missing) == 1 else 'checks of these areas have'} "
        f"no result here (deselected or not run)</summary><p>{_esc(', '.join(missing))}</p>"
        "</details>"
        if missing
        else ""
    )
    return (
        f'<section id="summary"><h2>Summary</h2><div class="pills">{pills}</div>'
        f"<p>{len(report.rows)} checks × {len(report.columns)} columns "
        f"({_esc(', '.join(report.columns))}), {len(report.results)} test results.</p>"
        f"{failed}{not_run}</section>"
    )


def _runs(report: Report) -> str:
    """One line per pytest run merged into the page: what ran, where, with what, and how."""
    if not report.runs:
        return ""
    body = []
    for run in sorted(report.runs, key=lambda r: r.get("started") or 0):
        started = run.get("started")
        exit_status = run.get("exit_status")
        verdict = {0: "all passed", 1: "some failed"}.get(
            exit_status if isinstance(exit_status, int) else -1, f"exit {exit_status}"
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) if started else "?"
        body.append(
            f'<tr><td class="id">{_esc(run.get("session") or "?")}</td>'
            f"<td>{_esc(run.get('target') or '?')}</td><td>{_esc(run.get('backend') or '?')}</td>"
            f"<td>{_esc(run.get('nodes') or '?')}</td><td>{_esc(run.get('toxiproxy') or '?')}</td>"
            f"<td>{_esc(run.get('seed'))}</td>"
            f"<td>{_esc(', '.join(run.get('defects') or []) or 'none')}</td>"
            f"<td>{_esc(when)}</td><td>{_esc(run.get('duration_s'))} s</td><td>{_esc(verdict)}</td>"
            f'<td class="asserts">{_esc(" ".join(run.get("args") or []))}</td></tr>'
        )
    return (
        '<section id="runs"><h2>Runs on this page</h2><table><thead><tr><th>session</th>'
        "<th>target</th><th>backend</th><th>nodes</th><th>toxiproxy</th><th>seed</th>"
        "<th>defects</th><th>started (UTC)</th><th>duration</th><th>pytest</th>"
        f"<th>arguments</th></tr></thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def _matrix(report: Report) -> str:
    """One table per suite (api, clients, io, ...), each with only the columns it ran in.

    A single table over every column is mostly empty: the api suite runs on the target
    alone, the clients suite per client pair.
    """
    suites: dict[str, list[Any]] = {}
    for row in report.rows:
        suites.setdefault(row.area.split(".")[0].split(":")[0], []).append(row)
    tables: list[str] = []
    for suite, suite_rows in suites.items():
        columns = [c for c in report.columns if any(c in row.cells for row in suite_rows)]
        head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
        body: list[str] = []
        area = None
        for row in suite_rows:
            if row.area != area:
                area = row.area
                body.append(
                    f'<tr class="area"><td colspan="{3 + len(columns)}">{_esc(area)}</td></tr>'
                )
            cells = "".join(
                f"<td>{_badge(row.cells[c], _anchor(row.check_id, c))}</td>"
                if c in row.cells
                else "<td></td>"
                for c in columns
            )
            body.append(
                f'<tr><td class="id">{_esc(row.check_id)}</td><td>{_esc(row.section)}</td>'
                f'<td class="asserts">{_esc(row.asserts)}</td>{cells}</tr>'
            )
        tables.append(
            f'<h3 id="suite-{_esc(suite)}">{_esc(suite)} ({len(suite_rows)} checks)</h3>'
            f"<table><thead><tr><th>check</th><th>§</th><th>asserts</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    return (
        '<section id="matrix"><h2>Conformance matrix</h2>'
        '<p class="legend"><span class="badge pass">pass</span><span class="badge fail">FAIL'
        '</span><span class="badge flaky">flaky</span><span class="badge deviation">known '
        'deviation</span><span class="badge vacuous">vacuous</span>'
        '<span class="badge skipped">skipped</span> — click a cell for its '
        "evidence. Columns: target (+ seeded defects) / client, or writer → reader.</p>"
        + "".join(tables)
        + "</section>"
    )


def _attachment(attachment: Attachment, out_dir: Path) -> str:
    path = attachment.path
    if not path.exists():
        return f"<p>{_esc(attachment.name)}: missing ({_esc(path)})</p>"
    size = path.stat().st_size
    if size > INLINE_LIMIT:
        try:
            link = path.resolve().relative_to(out_dir.resolve())
        except ValueError:
            link = path.resolve()
        return (
            f'<p><a href="{_esc(link)}">{_esc(attachment.name)}</a> '
            f"({size // 1024} KiB, kept beside the report)</p>"
        )
    text = path.read_text(errors="replace")
    if attachment.type == "application/json" or path.suffix == ".json":
        try:
            text = json.dumps(json.loads(text), indent=1)[:INLINE_LIMIT]
        except ValueError:
            pass
    return (
        f"<details><summary>{_esc(attachment.name)} ({size} bytes)</summary>"
        f"<pre>{_esc(text)}</pre></details>"
    )


def _result_detail(result: TestResult, out_dir: Path, drawn: frozenset[str] = frozenset()) -> str:
    plots_link = (
        f' <a href="#{_plot_anchor(result)}">plots</a>' if result.uuid in drawn else ""
    )
    parts = [
        f"<p><b>{_esc(result.full_name)}</b> — {_esc(result.status)}"
        f" ({(result.stop_ms - result.start_ms) / 1000:.1f} s){plots_link}</p>"
    ]
    if result.message:
        parts.append(f"<pre>{_esc(result.message)}</pre>")
    if result.trace and result.outcome == "fail":
        parts.append(
            f"<details><summary>traceback</summary><pre>{_esc(result.trace[-6000:])}"
            "</pre></details>"
        )
    labels = ", ".join(
        f"{k}={v}"
        for k, v in sorted(result.labels.items())
        if k not in ("host", "thread", "framework", "language")
    )
    parts.append(f'<p class="asserts">{_esc(labels)}</p>')
    parts.extend(_attachment(a, out_dir) for a in result.attachments)
    return "".join(parts)


EVIDENCE_ORDER = ("fail", "flaky", "vacuous", "deviation", "skipped", "pass")


def _details(report: Report, out_dir: Path, drawn: set[str] | None = None) -> str:
    """Every cell's evidence, what went wrong first; each block says what the check asserts."""
    blocks: list[tuple[int, str]] = []
    for row in report.rows:
        for column, cell in row.cells.items():
            inner = "".join(
                _result_detail(r, out_dir, frozenset(drawn or ())) for r in cell.results[-3:]
            )
            expects = f'<p class="asserts">asserts: {_esc(row.asserts)}</p>' if row.asserts else ""
            blocks.append(
                (
                    EVIDENCE_ORDER.index(cell.outcome),
                    f'<div class="detail detail-{cell.outcome}" '
                    f'id="{_anchor(row.check_id, column)}">'
                    f"<h3>{_esc(row.check_id)} — {_esc(column)}: "
                    f'<span class="badge {cell.outcome}">{OUTCOME_LABEL[cell.outcome]}'
                    f"{_attempts(cell)}</span> "
                    f'<a class="back" href="#matrix">back to the matrix</a></h3>'
                    f"{expects}{inner}</div>",
                )
            )
    ordered = "".join(block for _, block in sorted(blocks, key=lambda b: b[0]))
    return f'<section id="details"><h2>Evidence</h2>{ordered or "<p>none</p>"}</section>'


def _history_ops(attachment: Attachment) -> list[dict[str, Any]]:
    ops = []
    try:
        with attachment.path.open() as lines:
            for line in lines:
                if line.strip():
                    ops.append(json.loads(line))
    except (OSError, ValueError):
        return []
    return ops


def _json_attachment(attachment: Attachment) -> dict[str, Any]:
    try:
        data = json.loads(attachment.path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _short(result: TestResult) -> str:
    return result.name.removeprefix("test_")


def _window(window: str, fault: str) -> str:
    """'kill-one · kill-one 2.4-9.6s' says the fault twice: 'kill-one · during 2.4-9.6s'."""
    if window.startswith(f"{fault} "):
        return "during " + window.removeprefix(f"{fault} ")
    if window.startswith(f"after {fault} "):
        return "after " + window.removeprefix(f"after {fault} ")
    return window


def _plot_anchor(result: TestResult) -> str:
    return "plot-" + "".join(c if c.isalnum() else "-" for c in result.uuid)


def _unseen(checkers: list[dict[str, Any]]) -> dict[str, Any]:
    """The queue checker's unseen-records series of a result (empty without one)."""
    queue = next((d for d in checkers if d.get("checker") == "queue"), None)
    return ((queue or {}).get("figures") or {}).get("unseen") or {}


def _plots(report: Report) -> tuple[str, set[str]]:
    """The pictures of every result that left a history or checker figures: per history,
    membership views, appends and (where the queue checker judged it) the consumers' lag
    over time with the faults shaded; over all of them,
    detection and agreement against the bound, and lost and duplicated records per fault.

    Returns the section and the uuids of the results drawn (their evidence links here).
    """
    membership: list[tuple[TestResult, dict[str, Any]]] = []
    losses: list[tuple[TestResult, str, list[tuple[str, int, int]]]] = []
    groups: dict[str, list[tuple[TestResult, list[str]]]] = {}
    left_out = 0
    drawn = 0
    ordered = sorted(
        report.results,
        key=lambda r: (r.column, EVIDENCE_ORDER.index(r.outcome), r.name),
    )
    for result in ordered:
        histories = [a for a in result.attachments if a.name == "history" and a.path.exists()]
        checkers = [
            _json_attachment(a)
            for a in result.attachments
            if a.name.startswith("checker:") and a.path.exists()
        ]
        ops = _history_ops(histories[-1]) if histories else []
        membership.extend(
            (result, data.get("figures") or {})
            for data in checkers
            if data.get("checker") == "membership"
        )
        stream_set = next((d for d in checkers if d.get("checker") == "stream-set"), None)
        if stream_set is not None:  # without it, what was lost is not known
            fault = result.labels.get("fault", "").removeprefix("fault=") or _clip(
                _short(result), 30
            )
            losses.append((result, fault, plots.records_per_fault(ops, stream_set)))
        if not ops:
            continue
        if drawn >= MAX_HISTORIES:
            left_out += 1
            continue
        svgs = [
            svg
            for svg in (
                plots.membership_timeline(ops, f"views: {result.name}"),
                plots.throughput_latency(ops, f"appends: {result.name}"),
                plots.consumer_lag(ops, _unseen(checkers), f"consumer lag: {result.name}"),
            )
            if svg
        ]
        if svgs:
            drawn += 1
            groups.setdefault(result.column, []).append((result, svgs))

    def naming(results: list[TestResult]) -> Callable[[TestResult, str], str]:
        """A result's name, with its column when the plot holds several."""
        several = len({r.column for r in results}) > 1
        return lambda r, name: f"{name} ({r.column})" if several else name

    named = naming([r for r, _ in membership])
    loss_named = naming([r for r, _, _ in losses])
    loss_rows = [
        (f"{loss_named(result, fault)} · {_window(window, fault)}", lost, dup)
        for result, fault, rows in losses
        for window, lost, dup in rows
    ]
    summary = [
        svg
        for svg in (
            plots.detection_vs_bound([(named(r, _short(r)), f) for r, f in membership]),
            plots.loss_per_fault(loss_rows),
        )
        if svg
    ]
    if not summary and not groups:
        return "", set()
    parts = ['<section id="plots"><h2>Plots</h2>']
    if summary:
        parts.append(
            '<p class="asserts">Every membership check against the bound it was judged by '
            "(dots: each failure or epoch; bar: the slowest; dashed: the bound), and the "
            "records lost or duplicated in each fault window or after it: a lost record by "
            "when its append was acknowledged, a duplicate by when its extra copy was read "
            "(counted per reader). Below, each history with its faults shaded.</p>"
            + "".join(summary)
        )
    for column, items in groups.items():
        parts.append(f"<h3>Histories: {_esc(column)} ({len(items)})</h3>")
        for result, svgs in items:
            parts.append(
                f'<div class="plot-group" id="{_plot_anchor(result)}"><p>'
                f'<span class="badge {_esc(result.outcome)}">'
                f"{OUTCOME_LABEL.get(result.outcome, result.outcome)}</span> "
                f"<code>{_esc(result.full_name)}</code> "
                f'<span class="asserts">{_esc(result.labels.get("fault", ""))} '
                f'{_esc(result.labels.get("session", ""))}</span></p>{"".join(svgs)}</div>'
            )
    if left_out:
        parts.append(
            f"<p>{left_out} more histories are not drawn (at most {MAX_HISTORIES} per page); "
            "their files are in each result's evidence.</p>"
        )
    parts.append("</section>")
    return "".join(parts), {r.uuid for items in groups.values() for r, _ in items}


def _matrix_verdict(row: dict[str, Any]) -> tuple[str, str]:
    """(badge class, text) of one defect-matrix row."""
    if row.get("defect") == "healthy":
        return ("fail", "FAILED") if row.get("failed_tests") else ("pass", "clean")
    if row.get("not_applicable"):
        return "skipped", "n/a"
    return ("pass", "caught") if row.get("caught") else ("fail", "MISSED")


def _control_text(row: dict[str, Any]) -> str:
    """The defect under the faults we had before its own: "missed" proves its fault adds
    power; empty where the defect has no control run."""
    control = row.get("control")
    if not control:
        return ""
    if control.get("missed"):
        return "missed" if control.get("runs", 1) == 1 else f"missed in all {control['runs']}"
    if not control.get("failed_tests"):
        return "no run"
    runs = control.get("runs", 1)
    return "caught too" if runs == 1 else (
        f"caught too ({runs - control.get('missed_runs', 0)} of {runs})")


def _runs_caught(row: dict[str, Any]) -> str:
    """"k of N" runs that caught a defect (harness.matrix.runs), or how many of its runs the
    healthy row was clean in; empty for an n/a row and rows written before runs were counted."""
    if "caught_runs" not in row:
        return ""
    runs, caught = row.get("runs", 1), row["caught_runs"]
    if row.get("defect") == "healthy":
        return f"failed in {caught} of {runs}" if caught else f"clean in all {runs}"
    return f"{caught} of {runs}"


def _median_text(row: dict[str, Any]) -> str:
    if row.get("defect") == "healthy" or "median_runs_to_catch" not in row:
        return ""
    return str(row["median_runs_to_catch"])


def _defect_matrix(report: Report) -> str:
    rows = []
    for directory in report.results_dirs:
        path = directory / "defect-matrix.json"
        if path.exists():
            rows.extend(json.loads(path.read_text()).get("rows", []))
    if not rows:
        return ""
    body = "".join(
        f'<tr><td class="id">{_esc(r.get("defect"))}</td>'
        f'<td><span class="badge {_matrix_verdict(r)[0]}">{_matrix_verdict(r)[1]}</span></td>'
        f"<td>{_esc(_control_text(r))}</td>"
        f"<td>{_esc(_runs_caught(r))}</td><td>{_esc(_median_text(r))}</td>"
        f"<td>{_esc(', '.join(r.get('failed_suites') or []))}</td>"
        f'<td class="asserts">{_esc(r.get("not_applicable") or r.get("anomaly", ""))}</td></tr>'
        for r in rows
    )
    return (
        '<section id="defects"><h2>Defect matrix</h2><table><thead><tr><th>defect</th>'
        "<th>verdict</th><th>under the faults we had</th><th>runs that caught it</th>"
        "<th>median runs to catch</th><th>suites that failed</th>"
        "<th>anomaly found</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def render(report: Report, out_path: Path) -> str:
    out_dir = out_path.parent
    plotted, drawn = _plots(report)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>HStreamDB conformance report</title><style>{CSS}</style></head><body>"
        + _header(report)
        + "<main>"
        + _summary(report)
        + _runs(report)
        + _matrix(report)
        + _defect_matrix(report)
        + plotted
        + _details(report, out_dir, drawn)
        + "</main></body></html>"
    )
