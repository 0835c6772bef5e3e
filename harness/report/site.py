"""`reports/site/`: a folder ready for static hosting, one page per run and an index."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from harness.report.html import render
from harness.report.model import Report

INDEX_FILE = "runs.json"


def publish(report: Report, site_dir: Path) -> Path:
    """Add this report as a run under site_dir/runs/<stamp>/ and rewrite the index."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = site_dir / "runs" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    page = run_dir / "index.html"
    page.write_text(render(report, page))
    index_path = site_dir / INDEX_FILE
    runs = json.loads(index_path.read_text()) if index_path.exists() else []
    counts = report.counts()
    runs.append(
        {
            "stamp": stamp,
            "path": f"runs/{stamp}/index.html",
            "targets": sorted({r.labels.get("target", "?") for r in report.results}),
            "counts": counts,
        }
    )
    index_path.write_text(json.dumps(runs, indent=1))
    rows = "".join(
        f'<tr><td><a href="{html.escape(r["path"])}">{html.escape(r["stamp"])}</a></td>'
        f"<td>{html.escape(', '.join(r['targets']))}</td>"
        f"<td>{r['counts'].get('pass', 0)}</td><td>{r['counts'].get('fail', 0)}</td>"
        f"<td>{r['counts'].get('deviation', 0)}</td><td>{r['counts'].get('skipped', 0)}</td></tr>"
        for r in reversed(runs)
    )
    (site_dir / "index.html").write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>HStreamDB '
        "conformance runs</title><style>body{font:14px system-ui,sans-serif;margin:24px}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}</style></head>"
        "<body><h1>HStreamDB conformance runs</h1><table><tr><th>run</th><th>targets</th>"
        f"<th>pass</th><th>fail</th><th>deviations</th><th>skipped</th></tr>{rows}</table>"
        "</body></html>"
    )
    return page
