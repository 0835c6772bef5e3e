"""Bring-up time of a reference cluster on each runtime, side by side: median of several runs.

For every runtime, starts a cluster (store, N nodes, Toxiproxy, `server init`), records the
seconds until `start_cluster` returned a ready cluster, and the seconds `stop()` took. The
docker runtime needs the refserver image (`python -m harness.images build all`); its build
is not part of the figure. The ssh runtime runs on `--inventory FILE`, or on N+1 sshd
containers this benchmark starts (`hstream-conformance hosts up`) and removes; its first
bring-up on fresh hosts uploads and installs the reference server, which is timed apart
("install run") and not part of the median.

    python benchmarks/bringup_bench.py [--runs 3] [--nodes 3] [--backends local,docker,ssh]
        [--inventory FILE] [--no-toxiproxy] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from harness import HarnessError
from harness.cluster import start_cluster
from harness.runtimes import runtime_names
from harness.topology import ClusterSpec

# A port block of its own, away from the harness tests' clusters (local backend only).
BASE_PORT = 19600


def bring_up_once(backend: str, nodes: int, toxiproxy: bool, run: int,
                  inventory: str | None = None) -> tuple[float, float]:
    session = f"bench-bringup-{os.getpid()}-{backend}-{run}"
    spec = ClusterSpec(
        nodes=nodes, backend=backend, toxiproxy=toxiproxy, base_port=BASE_PORT, session=session,
        inventory=inventory,
    )
    began = time.monotonic()
    cluster = start_cluster(spec, progress=lambda line: None)
    up = time.monotonic() - began
    began = time.monotonic()
    cluster.stop()
    return up, time.monotonic() - began


def measure(backend: str, runs: int, nodes: int, toxiproxy: bool,
            inventory: str | None = None) -> dict[str, Any]:
    ups: list[float] = []
    downs: list[float] = []
    install_s = None
    if backend == "ssh":
        install_s, _ = bring_up_once(backend, nodes, toxiproxy, -1, inventory)
        print(f"  ssh install run (uploads what the hosts lack): up {install_s:.2f}s",
              file=sys.stderr)
    for run in range(runs):
        up, down = bring_up_once(backend, nodes, toxiproxy, run, inventory)
        ups.append(up)
        downs.append(down)
        print(f"  {backend} run {run + 1}/{runs}: up {up:.2f}s, stop {down:.2f}s",
              file=sys.stderr)
    return {
        "backend": backend,
        "nodes": nodes,
        "toxiproxy": toxiproxy,
        "runs": runs,
        "bringup_s": [round(x, 3) for x in ups],
        "bringup_median_s": round(statistics.median(ups), 3),
        "stop_median_s": round(statistics.median(downs), 3),
        **({"install_run_s": round(install_s, 3)} if install_s is not None else {}),
    }


@contextlib.contextmanager
def ssh_inventory(given: str | None, nodes: int) -> Iterator[str]:
    """The inventory to run the ssh runtime on: the one given, or sshd containers for now."""
    if given:
        yield given
        return
    from harness.testhosts.sshd import running_hosts

    print(f"ssh: starting {nodes}+1 sshd hosts (not timed)", file=sys.stderr)
    with running_hosts(nodes, f"bench{os.getpid()}", progress=lambda line: None) as hosts:
        yield str(hosts.inventory_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per backend (default 3)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per cluster (default 3)")
    parser.add_argument("--backends", default="local,docker,ssh",
                        help="comma-separated runtimes (default local,docker,ssh)")
    parser.add_argument("--inventory", metavar="FILE",
                        help="the ssh runtime's machines (default: sshd containers started here)")
    parser.add_argument("--no-toxiproxy", action="store_true", help="start without proxies")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(runtime_names()))
    if unknown:
        parser.error(f"unknown backend {', '.join(unknown)}; known: {', '.join(runtime_names())}")
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be in 1..20 (each run starts and stops a whole cluster)")
    if not 1 <= args.nodes <= 10:
        parser.error("--nodes must be in 1..10 for this benchmark")

    results = []
    for backend in backends:
        print(f"{backend}: {args.runs} bring-ups of {args.nodes} nodes", file=sys.stderr)
        try:
            hosts = ssh_inventory(args.inventory, args.nodes) if backend == "ssh" \
                else contextlib.nullcontext(None)
            with hosts as inventory:
                results.append(measure(backend, args.runs, args.nodes, not args.no_toxiproxy,
                                       inventory))
        except HarnessError as exc:
            print(f"{backend}: skipped: {exc}", file=sys.stderr)
            results.append({"backend": backend, "skipped": str(exc)})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'backend':8} {'nodes':>5} {'runs':>4} {'median up':>10} {'median stop':>12} "
              f"{'install run':>12}")
        for row in results:
            if "skipped" in row:
                print(f"{row['backend']:8} skipped: {row['skipped']}")
                continue
            print(f"{row['backend']:8} {row['nodes']:>5} {row['runs']:>4} "
                  f"{row['bringup_median_s']:>9.2f}s {row['stop_median_s']:>11.2f}s "
                  + (f"{row['install_run_s']:>11.2f}s" if "install_run_s" in row else ""))
    return 0 if all("skipped" not in row for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
