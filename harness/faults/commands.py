"""`hstream-conformance replay <schedule.json>`: run a saved failing fault schedule again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import HarnessError
from harness.cli import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schedule", type=Path, help="a schedule saved by the fault search")
    parser.add_argument(
        "--defect",
        action="append",
        default=None,
        metavar="NAME",
        help="override the defects the schedule was found with",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="client port of the replay's cluster (default: the topology's, 6570)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help="where to write the replay's history (default: reports/replays/)",
    )


def run(args: argparse.Namespace) -> int:
    from harness.cluster import start_cluster
    from harness.faults.schedule_runner import replay
    from harness.history import History
    from harness.nemesis import Schedule
    from harness.nemesis.faults import DISK_KINDS
    from harness.topology import build_spec

    try:
        schedule = Schedule.load(args.schedule)
        settings = schedule.cluster
        spec = build_spec(
            None,
            nodes=settings.get("nodes", 3),
            backend=settings.get("backend", "local"),
            seed=settings.get("seed", 0),
            defects=tuple(args.defect if args.defect is not None else settings.get("defects", ())),
            base_port=args.base_port,
        )
        if settings.get("gossip"):
            spec = spec.with_(gossip=dict(settings["gossip"]))
        if any(s.fault is not None and s.fault.fault.kind == "clock" for s in schedule.steps):
            spec = spec.with_(clock_faults=True)  # its nodes need the clock layer
        if any(s.fault is not None and s.fault.fault.kind in DISK_KINDS for s in schedule.steps):
            spec = spec.with_(disk_faults=True)  # its store needs the lazy disk
        history_path = args.history or Path("reports") / "replays" / (
            args.schedule.stem + ".history.jsonl"
        )
        print(
            f"replaying {len(schedule.steps)} steps of {args.schedule} on {spec.nodes} "
            f"{spec.backend} nodes, defects: {', '.join(spec.defects) or 'none'}"
        )
        with start_cluster(spec) as cluster, History(history_path) as history:
            result = replay(schedule, cluster, history)
    except HarnessError as error:
        print(f"hstream-conformance replay: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"history: {history_path}")
    return 0 if result.valid is True else 1


register_command("replay", "replay a saved fault schedule and judge it", add_arguments, run)
