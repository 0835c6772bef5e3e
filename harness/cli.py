"""`hstream-conformance`: the command line.

Built in: `cluster up|status|down`. Other subcommands (check, replay, report, ...) are
registered by the modules that own them: a module `harness/<package>/commands.py` calls

    from harness.cli import register_command
    register_command("check", "re-run checkers on a saved history", add_arguments, run)

where `add_arguments(parser)` declares its flags and `run(args) -> int` returns the exit
status. The CLI imports every such module on start; one that fails to import is reported in
one line and the others still work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import HarnessError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: AddArguments
    run: Run


COMMANDS: dict[str, Command] = {}
_IMPORT_PROBLEMS: list[str] = []


def register_command(name: str, help: str, add_arguments: AddArguments, run: Run) -> None:
    """Add a subcommand `hstream-conformance <name>`; re-registering a name replaces it."""
    COMMANDS[name] = Command(name, help, add_arguments, run)


def _load_command_modules() -> None:
    package_dir = Path(__file__).resolve().parent
    for module_file in sorted(package_dir.glob("*/commands.py")):
        module = f"harness.{module_file.parent.name}.commands"
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken module must not take the whole CLI down
            _IMPORT_PROBLEMS.append(f"{module}: {type(exc).__name__}: {exc}")


# -- cluster up | status | down ---------------------------------------------------------------
def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="up|status|down")
    up = actions.add_parser("up", help="start a cluster and leave it running")
    up.add_argument("--topology", help="topology TOML (a path or a name in fixtures/topologies/)")
    up.add_argument("--nodes", type=int, help="number of server nodes (default 3)")
    up.add_argument("--target", help="reference (default) or hstream:<image>")
    up.add_argument("--backend", help="local (default) or docker")
    up.add_argument("--defect", action="append", default=[], metavar="NAME",
                    help="seeded defect of the reference server (repeatable)")
    up.add_argument("--seed", type=int, help="seed recorded with the cluster")
    up.add_argument("--toxiproxy-url", help="a running Toxiproxy API (default: embedded one)")
    up.add_argument("--no-toxiproxy", action="store_true", help="no proxies in front of nodes")
    up.add_argument("--base-port", type=int, help="client port; gossip +1, store +2, proxy +3")
    up.add_argument("--json", action="store_true", help="print the cluster as JSON")
    status = actions.add_parser("status", help="show the clusters started by `cluster up`")
    status.add_argument("--json", action="store_true", help="print JSON")
    down = actions.add_parser("down", help="stop and remove clusters started by `cluster up`")
    down.add_argument("--label", help="only this cluster (default: every detached or dead one)")


def _run_cluster(args: argparse.Namespace) -> int:
    if args.action == "up":
        return _cluster_up(args)
    if args.action == "status":
        return _cluster_status(args)
    return _cluster_down(args)


def _cluster_up(args: argparse.Namespace) -> int:
    from harness.cluster import start_cluster
    from harness.targets import target_for
    from harness.topology import build_spec

    spec = build_spec(
        args.topology,
        nodes=args.nodes,
        target=args.target,
        backend=args.backend,
        defects=tuple(args.defect),
        seed=args.seed,
        toxiproxy_url=args.toxiproxy_url,
        toxiproxy=False if args.no_toxiproxy else None,
        base_port=args.base_port,
    )
    target_for(spec)
    cluster = start_cluster(spec, progress=_print_progress, detached=True)
    status = cluster.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_cluster(status)
        print(f"stop it with: hstream-conformance cluster down --label {spec.label}")
    return 0


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_cluster(status: dict[str, Any], alive: dict[str, bool] | None = None) -> None:
    spec = status["spec"]
    print(f"cluster {spec['session']}-{spec['name']}: target {spec['target']}, backend "
          f"{spec['backend']}, {spec['nodes']} node(s), seed {spec['seed']}")
    print(f"  toxiproxy: {status.get('toxiproxy_url') or 'off'}")
    for node in status["nodes"]:
        where = f"pid {node['pid']}" if node.get("pid") else f"container {node['container_id']}"
        state = node["state"]
        if alive is not None and node["name"] in alive:
            state = "running" if alive[node["name"]] else "gone"
        print(f"  node {node['id']}: {node['client_url']}  gossip {node['gossip']}  "
              f"{where}  {state}  log {node['log']}")


def _cluster_status(args: argparse.Namespace) -> int:
    from harness.cleanup import all_records

    found: list[dict[str, Any]] = []
    for record in all_records():
        meta = record.meta()
        if not meta:
            continue
        live = {p.name: True for p in record.live_processes()}
        names = {p.name for p in record.processes()}
        alive = {name: name in live for name in names}
        found.append({"label": record.label, "detached": bool(meta.get("detached")),
                      "owner_alive": record.owner_alive(), "processes_alive": alive,
                      "status": meta.get("status")})
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no clusters (start one with: hstream-conformance cluster up)")
        return 0
    for entry in found:
        owner = "detached" if entry["detached"] else (
            "owned by a running process" if entry["owner_alive"] else "owner gone (leftover)")
        running = sum(entry["processes_alive"].values())
        print(f"{entry['label']}: {owner}, {running}/{len(entry['processes_alive'])} "
              "processes running")
        if entry["status"]:
            _print_cluster(entry["status"], entry["processes_alive"])
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from harness.cleanup import all_records, sweep

    if args.label and args.label not in {r.label for r in all_records()}:
        raise HarnessError(f"no cluster labelled {args.label!r}; see `hstream-conformance "
                           "cluster status`")
    result = sweep(include_detached=True, only=args.label)
    if not result.clusters:
        print("nothing to remove")
        return 0
    for label in result.clusters:
        print(f"removed {label}")
    print(f"stopped {len(result.killed_pids)} process(es)")
    return 0


register_command("cluster", "start (up), show (status) or remove (down) a cluster",
                 _add_cluster_arguments, _run_cluster)


# -- export (harness.export) ------------------------------------------------------------------
def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.export import add_arguments

    add_arguments(parser)


def _run_export(args: argparse.Namespace) -> int:
    from harness.export import run

    return run(args)


register_command("export", "write a saved history in Jepsen's shape (EDN op maps)",
                 _add_export_arguments, _run_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hstream-conformance",
        description="Conformance and chaos harness for HStreamDB.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in sorted(COMMANDS.values(), key=lambda c: c.name):
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _load_command_modules()
    for problem in _IMPORT_PROBLEMS:
        print(f"hstream-conformance: warning: command module not loaded: {problem}",
              file=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except HarnessError as exc:
        print(f"hstream-conformance {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
