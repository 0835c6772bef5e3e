"""Wall time of the whole conformance run, serial against parallel, in one invocation.

Runs the five conformance suites (api, clients, io, membership, durability) on the healthy
reference cluster twice per runtime: once serial (`-n 0`), once with pytest-xdist workers
(`-n auto`, sized by harness.parallel, or `--workers N`), and prints each wall time, its
test counts and the ratio serial / parallel. Both runs happen in the same invocation so the
ratio compares like with like on a noisy machine. A run with a failed test is still timed,
but its row says so (a fast red run proves nothing).

    python benchmarks/conformance_wall_bench.py [--backends local,docker] [--workers N]
        [--suites suites/api,...] [--json]

The full local pair takes about 30 minutes on a 2-core machine; it is a benchmark, not a
test, so nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("suites/api", "suites/clients", "suites/io", "suites/membership", "suites/durability")
# Ports of their own: a benchmark may run next to a developer's tests.
BASE_PORT = 11000


def counts(junit: Path) -> dict[str, int]:
    if not junit.exists():
        return {}
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def run_once(backend: str, workers: str, suites: list[str], out: Path) -> dict[str, Any]:
    junit = out / "junit.xml"
    cmd = [
        sys.executable, "-m", "pytest", *suites, "-q", "-p", "no:cacheprovider",
        "--backend", backend, "--base-port", str(BASE_PORT), f"--junitxml={junit}",
        f"--alluredir={out / 'allure'}", "-n", workers,
        *(["--dist", "loadscope"] if workers != "0" else []),
    ]
    print(f"[bench] {backend} -n {workers}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.monotonic() - started
    (out / "pytest.log").write_text(done.stdout)
    found = counts(junit)
    print(f"[bench] {backend} -n {workers}: {wall:.0f} s, exit {done.returncode}, {found}; "
          f"log {out / 'pytest.log'}", file=sys.stderr, flush=True)
    return {"backend": backend, "workers": workers, "wall_s": round(wall, 1),
            "exit": done.returncode, **found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="local", help="comma-separated (local,docker)")
    parser.add_argument("--workers", default="auto", help="xdist workers of the parallel run")
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    suites = [s for s in args.suites.split(",") if s]
    if args.workers == "auto":
        from harness.parallel import auto_workers

        args.workers = str(auto_workers())  # the count `-n auto` resolves to, shown in the table
    rows: list[dict[str, Any]] = []
    # Kept after the run (reports/ is git-ignored): a red row's log is its evidence.
    scratch = ROOT / "reports" / "wall-bench" / time.strftime("%Y%m%d-%H%M%S")
    for backend in [b for b in args.backends.split(",") if b]:
        # Parallel first: a red parallel run (the one that needs the scheduling right) shows
        # within minutes, not after the long serial run.
        for workers in (args.workers, "0"):
            out = scratch / f"{backend}-{workers}"
            out.mkdir(parents=True)
            rows.append(run_once(backend, workers, suites, out))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"conformance wall time ({len(suites)} suites, {os.cpu_count()} cores)")
    print(f"{'backend':8} {'workers':>7} {'wall s':>8} {'passed':>7} {'failed':>7} "
          f"{'skipped':>7}  ratio")
    serial = {row["backend"]: row["wall_s"] for row in rows if row["workers"] == "0"}
    for row in rows:
        failed = row.get("failures", 0) + row.get("errors", 0)
        ratio = "" if row["workers"] == "0" else f"{serial[row['backend']] / row['wall_s']:.2f}x"
        note = "" if row["exit"] == 0 else f"  (exit {row['exit']}: not green)"
        print(f"{row['backend']:8} {row['workers']:>7} {row['wall_s']:>8.0f} "
              f"{row.get('passed', 0):>7} {failed:>7} {row.get('skipped', 0):>7}  {ratio}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
