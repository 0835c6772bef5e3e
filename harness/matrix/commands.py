"""`hstream-conformance defect-matrix`: every seeded defect caught, the healthy run clean."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli import register_command
from harness.matrix.defects import TARGETS, healthy_and_all_caught, run_matrix, table, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(TARGETS),
        default=None,
        help="run just these defects (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports") / "defect-matrix",
        help="where per-run logs and JUnit files go",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("reports") / "allure-results",
        help="where defect-matrix.json goes for the HTML report",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        metavar="N",
        help="run every selection N times: each defect's row says in how many runs it was "
        "caught and its median runs-to-catch; controls must miss and the healthy run must "
        "be clean in all N",
    )
    parser.add_argument(
        "--separate-runs",
        action="store_true",
        help="with --runs N, start pytest N times per selection (every run on fresh clusters) "
        "instead of once with --repeat N (the repeats of a test share its module's cluster "
        "unless -n spreads them over workers)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        print(f"hstream-conformance defect-matrix: --runs takes 1 or more, not {args.runs}",
              file=sys.stderr)
        return 2
    outcomes = run_matrix(args.out, list(args.pytest_args), args.only, runs=args.runs,
                          separate=args.separate_runs)
    print(table(outcomes))
    print(f"written: {write_json(outcomes, args.results)}; logs in {args.out}/")
    return 0 if healthy_and_all_caught(outcomes) else 1


register_command(
    "defect-matrix", "run the suites once per seeded defect and once healthy", add_arguments, run
)
