"""`hstream-conformance check <history.jsonl>` (also `python -m harness.checkers`).

Re-judges a saved history. Exit status: 0 valid or unknown, 1 invalid, 2 when the history
or the options are unusable. Registered with the CLI on import (harness.cli loads every
`harness/*/commands.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import HarnessError
from harness.checkers import CHECKERS, CheckOptions, check_all
from harness.history import load_ops

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNUSABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("history", type=Path, help="a history written by harness.history")
    parser.add_argument(
        "--checker",
        action="append",
        choices=sorted(CHECKERS),
        help="run this checker (repeatable); default: every checker the history has ops for",
    )
    parser.add_argument(
        "--exactly-once", action="store_true", help="duplicated records are a failure"
    )
    parser.add_argument(
        "--linearizable", action="store_true", help="stale reads are a failure"
    )
    parser.add_argument(
        "--ack-timeout", type=float, metavar="S", help="subscription ack timeout, seconds"
    )
    parser.add_argument(
        "--grace", type=float, default=1.0, metavar="S",
        help="allowed ack-to-redelivery race, seconds (default 1)",
    )
    parser.add_argument(
        "--membership-bound", type=float, metavar="S",
        help="membership must agree within this many seconds after each change",
    )
    parser.add_argument(
        "--false-suspicions-fail", action="store_true",
        help="a member suspected while reachable fails the membership check",
    )
    parser.add_argument(
        "--absent-as", choices=("dead", "suspect"), default="dead",
        help="a member missing from a view is dead (default) or suspect (DescribeCluster)",
    )
    parser.add_argument(
        "--json", metavar="PATH",
        help="also write the full results (anomalies, figures) as JSON; '-' for stdout",
    )


def run(args: argparse.Namespace) -> int:
    options = CheckOptions(
        checkers=args.checker,
        exactly_once=args.exactly_once,
        linearizable=args.linearizable,
        ack_timeout_s=args.ack_timeout,
        grace_s=args.grace,
        membership_bound_s=args.membership_bound,
        false_suspicions_fail=args.false_suspicions_fail,
        membership_absent=args.absent_as,
    )
    try:
        ops = load_ops(args.history)
        report = check_all(ops, options)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not report.results:
        print(
            f"error: {args.history} has no ops any checker judges (appends, reads, fetches, "
            "acks or views); is it a history file?",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    print(f"history: {args.history}")
    print(report.table())
    if args.json:
        text = json.dumps(report.to_json(), indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return EXIT_INVALID if report.valid is False else EXIT_VALID


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.checkers",
        description="Judge a saved history with the harness's checkers.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _register() -> None:
    from harness.cli import register_command

    register_command("check", "re-judge a saved history with the checkers", add_arguments, run)


_register()
