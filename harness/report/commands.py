"""`hstream-conformance report`: build reports/conformance.html (and the static site)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.cli import register_command
from harness.report.html import render
from harness.report.model import build, load_results
from harness.report.site import publish


def results_dir(path: Path) -> Path:
    """Accept either an allure results folder or a reports/ folder that holds one."""
    nested = path / "allure-results"
    return nested if nested.is_dir() else path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        action="append",
        type=Path,
        default=[],
        help="allure results (or a reports/ folder holding allure-results/); "
        "repeat to merge several runs into one page (default: reports)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the page to write (default: reports/conformance.html)",
    )
    parser.add_argument(
        "--site",
        type=Path,
        default=None,
        help="also publish into this static-site folder (default: "
        "reports/site); pass --no-site to skip",
    )
    parser.add_argument("--no-site", action="store_true", help="do not update the site folder")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    dirs = [results_dir(p) for p in (args.results or [Path("reports")])]
    try:
        results, runs = load_results(dirs)
    except FileNotFoundError as error:
        print(f"hstream-conformance report: {error}", file=sys.stderr)
        return 2
    report = build(results, runs, dirs)
    out = args.out or Path("reports") / "conformance.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report, out))
    counts = report.counts()
    print(
        f"wrote {out} ({out.stat().st_size // 1024} KiB): {len(report.rows)} checks, "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f" in {time.monotonic() - started:.2f} s"
    )
    if not args.no_site:
        page = publish(report, args.site or Path("reports") / "site")
        print(f"published {page}")
    return 0


register_command(
    "report", "build the HTML conformance report from allure results", add_arguments, run
)
