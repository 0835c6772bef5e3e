"""Parallel runs with pytest-xdist: what each worker owns, and how many workers a machine takes.

A run is one xdist controller and N workers. The controller draws the run's seed and session
label; every worker gets both (through `workerinput`), so:
- the seed is the run's: a test's random choices depend on the seed and the test alone,
  never on which worker ran it, and `--seed S` replays any test of the run;
- each worker's session label is the run's plus `-gw<N>`: every process, container, network,
  data directory and history of the worker carries it, and the report still groups the
  workers' results under the run's label;
- each worker owns a block of WORKER_PORT_SPAN ports above the run's base port, so clusters
  of different workers never share a port (clusters of one worker move by PORT_BLOCK).

`-n auto` asks `auto_workers()`: most of a cluster test is waiting on the cluster, so a
worker per core would leave the machine idle; memory bounds it instead (a 3-node cluster
with its clients and Toxiproxy takes well under MEMORY_PER_WORKER).
"""

from __future__ import annotations

import os
from typing import Any

# Clusters of one worker move by PORT_BLOCK (harness.plugin) over at most 50 positions.
PORT_BLOCK = 10
WORKER_PORT_SPAN = PORT_BLOCK * 50
# The run's ports must stay below the kernel's ephemeral range (32768 by default), where an
# outgoing connection could take a port a node is about to bind. The hstream target puts
# nodes at base_port + 10000 when proxied: from the default 6570, MAX_WORKERS blocks end
# at 24570.
MAX_WORKERS = 16
WORKERS_PER_CORE = 3
MEMORY_PER_WORKER = 1.5 * 2**30
WORKERS_ENV = "HSTREAM_CONFORMANCE_WORKERS"

INPUT_KEY = "hstream_conformance"


def worker_index(config: Any) -> int | None:
    """This process's xdist worker number (gw3 → 3), or None in a plain run / the controller."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    return int(str(workerinput.get("workerid", "gw0")).removeprefix("gw"))


def run_input(config: Any) -> dict[str, Any] | None:
    """What the controller handed this worker (seed, session), or None outside a worker."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    found = workerinput.get(INPUT_KEY)
    return dict(found) if isinstance(found, dict) else None


def worker_session(run_session: str, index: int) -> str:
    return f"{run_session}-gw{index}"


def worker_base_port(base_port: int, index: int | None) -> int:
    return base_port if index is None else base_port + WORKER_PORT_SPAN * index


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def auto_workers() -> int:
    """Workers for `-n auto`: WORKERS_PER_CORE per core, bounded by available memory and
    MAX_WORKERS; the environment variable HSTREAM_CONFORMANCE_WORKERS overrides it."""
    chosen = os.environ.get(WORKERS_ENV)
    if chosen:
        try:
            return max(1, min(MAX_WORKERS, int(chosen)))
        except ValueError:
            pass  # a malformed value falls back to the computed one (the header shows it)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    by_cores = WORKERS_PER_CORE * (cores or 1)
    memory = _memory_bytes()
    by_memory = int(memory // MEMORY_PER_WORKER) if memory else by_cores
    return max(1, min(MAX_WORKERS, by_cores, by_memory))
