"""`hstream-conformance hosts up N | down`: sshd containers standing in for machines, and the
inventory that lists them (harness.testhosts.sshd)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="up|down")
    up = actions.add_parser("up", help="start N node hosts and a store host, write the inventory")
    up.add_argument("n", type=int, help="number of node hosts")
    up.add_argument("--name", default="default", help="name of the set (default: default)")
    up.add_argument("--inventory-out", type=Path, metavar="FILE",
                    help="where to write the inventory (default reports/.hosts/NAME/)")
    up.add_argument("--extra-addresses", type=int, default=2, metavar="K",
                    help="more addresses per node host, for clusters larger than N (0..2)")
    down = actions.add_parser("down", help="remove test hosts")
    down.add_argument("--name", help="only this set (default: every set)")


def run(args: argparse.Namespace) -> int:
    from harness.testhosts.sshd import hosts_down, hosts_up

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.action == "up":
        found = hosts_up(args.n, args.name, args.inventory_out, args.extra_addresses,
                         progress=progress)
        for entry in found.inventory.hosts:
            print(f"{entry.name}\t{entry.address}\t{entry.role}")
        print(f"inventory: {found.inventory_path}")
        print(f"use it with: --backend ssh --inventory {found.inventory_path}")
        return 0
    removed = hosts_down(args.name)
    print(f"removed: {', '.join(removed) or 'nothing'}")
    return 0


register_command("hosts", "sshd containers standing in for machines (the ssh backend's tests)",
                 add_arguments, run)
