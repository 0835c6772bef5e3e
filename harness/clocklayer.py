"""The clock layer: libfaketime preloaded into a cluster's nodes, so each node's realtime
clock can be set apart from true time while it runs (the nemesis' clock family).

A node spawned with the layer (`ClusterSpec.clock_faults`) gets `layer_env(path)`:
libfaketime (Debian's libfaketime package) in LD_PRELOAD, reading its time spec from a
file on the node's host at every clock call (FAKETIME_NO_CACHE=1), so rewriting that file
changes the node's clock at once, without a restart. A node started without the file sees
true time. Only the realtime clock is faked (FAKETIME_DONT_FAKE_MONOTONIC=1):
Jepsen's clock faults move the wall clock and leave the monotonic clock alone, and
libfaketime 0.9.10 (Debian bookworm) would otherwise turn CLOCK_MONOTONIC into the faked
wall clock.

Measured on libfaketime 0.9.10 (Debian bookworm) before this was written:
* the spec file is re-read on every clock call with FAKETIME_NO_CACHE=1; "+30", "-2.5",
  "+0.25" are offsets in seconds (fractions with a '.', in the C locale); a process that
  starts without the file, or with it empty, sees true time, but a running process keeps
  its last spec when the file turns empty or goes: true time is written as "+0";
* with FAKETIME_DONT_FAKE_MONOTONIC=1, clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)
  fails with EINVAL (libfaketime issue 426), which Python 3.11's time.sleep calls:
  `adapt_python_sleep` is how our own Python nodes live with it; every other wait Python
  uses (locks, conditions, select, asyncio) is unaffected;
* a rate in the spec ("+0 x1.5") runs from each process's own start, so a second process
  (the measurement below) would disagree with the node: the nemesis makes a rate by moving
  the offset in small steps instead (harness.nemesis.clock).

Every action is a command on the node's host (`Host.exec`): the same on this machine, in a
container and over SSH. `measure_argv` reads the node's time as the node sees it, with the
host's true time on both sides, so the offset recorded is the host's own.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, cast

# `$LIB` is expanded by the dynamic loader to the host's library directory
# (lib/x86_64-linux-gnu, lib/aarch64-linux-gnu ...), so one value serves every Debian host.
# The MT variant is the one for threaded programs (a gRPC server is one).
LIBRARY = "/usr/$LIB/faketime/libfaketimeMT.so.1"
LIBRARY_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"
PACKAGE = "libfaketime"
SPEC_SUFFIX = ".faketime"
# Spec files of a node whose host offers no directory of the cluster's own (a container's
# filesystem, gone with the container).
CONTAINER_DIR = "/tmp"


def layer_env(spec_path: str) -> dict[str, str]:
    """The environment that puts a process under the clock layer, reading `spec_path`."""
    return {
        "LD_PRELOAD": LIBRARY,
        "FAKETIME_TIMESTAMP_FILE": spec_path,
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def spec_path(host: Any, runtime: Any, process: str) -> str:
    """Where the spec file of `process` lives on its host: the ssh host's directory of this
    cluster, the local runtime's data directory (both removed at teardown), else the
    container's own /tmp."""
    remote_dir = getattr(host, "dir", None)
    if isinstance(remote_dir, str):
        return str(PurePosixPath(remote_dir) / f"{process}{SPEC_SUFFIX}")
    data_dir = getattr(runtime, "data_dir", None)
    if data_dir is not None:
        return os.path.join(str(data_dir), f"{process}{SPEC_SUFFIX}")
    return str(PurePosixPath(CONTAINER_DIR) / f"{process}{SPEC_SUFFIX}")


def spec_text(offset_s: float) -> str:
    """The libfaketime spec for an offset in seconds ("+0" is true time: a running process
    keeps its last spec when the file is empty or missing)."""
    if abs(offset_s) < 1e-7:
        return "+0"
    return f"{offset_s:+.6f}"


def write_argv(path: str, offset_s: float) -> list[str]:
    """A command that sets the spec file at `path` to `offset_s`, atomically: written
    aside, then renamed, so a clock call of the node never reads a half-written file."""
    quoted = shlex.quote(path)
    text = shlex.quote(spec_text(offset_s))
    return ["sh", "-c", f"printf '%s' {text} > {quoted}.new && mv -f {quoted}.new {quoted}"]


def measure_argv(path: str) -> list[str]:
    """A command printing the host's true time, the time a process under the layer reading
    `path` sees, and the true time again (seconds since the epoch, one per line).

    The true times are read with LD_PRELOAD unset: a command run in a node's container
    (`docker exec`) inherits the container's environment, the layer included."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in layer_env(path).items())
    true = "env -u LD_PRELOAD date +%s.%N"
    return ["sh", "-c", f"{true}; env {env} date +%s.%N; {true}"]


def probe_argv() -> list[str]:
    """A command that succeeds where the layer's library is installed."""
    return ["sh", "-c", f"ls {LIBRARY_GLOB} >/dev/null 2>&1"]


@dataclass(frozen=True)
class Reading:
    """One look at a node's clock: node time minus true time, with its uncertainty (half
    the true time that passed while reading)."""

    offset_s: float
    error_s: float

    def to_json(self) -> dict[str, float]:
        return {"offset": round(self.offset_s, 6), "error": round(self.error_s, 6)}


class MeasureError(ValueError):
    """The measurement command printed something else than three times."""


def parse_measurement(output: str) -> Reading:
    """The `Reading` from what `measure_argv` printed."""
    try:
        before, seen, after = (float(line) for line in output.split())
    except ValueError:
        raise MeasureError(
            f"expected three times (true, node's, true) from date, got {output.strip()!r}"
        ) from None
    true = (before + after) / 2
    return Reading(seen - true, max(0.0, (after - before) / 2))


def under_layer(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs under the clock layer with the monotonic clock left true."""
    env = os.environ if environ is None else environ
    return "faketime" in env.get("LD_PRELOAD", "") and bool(env.get("FAKETIME_DONT_FAKE_MONOTONIC"))


def adapt_python_sleep() -> bool:
    """Under the layer, replace time.sleep by a wait on the (true) monotonic clock that does
    not call clock_nanosleep, which libfaketime 0.9.10 breaks there (see module docstring).
    Returns whether it did; a process outside the layer is left as it is."""
    if not under_layer():
        return False
    import select
    import time

    def sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select([], [], [], remaining)

    time.sleep = sleep  # type: ignore[assignment]
    return True


def library_here() -> str:
    """The layer's library path on this machine (Debian's multiarch directory)."""
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return LIBRARY.replace("$LIB", f"lib/{multiarch}")


def ensure_library_here(progress: Callable[[str], None] = print) -> None:
    """Install libfaketime on this machine on first use (as root), else raise ToolMissing
    naming the command (harness.debian)."""
    from harness.debian import ensure_tools

    ensure_tools({library_here(): PACKAGE}, why="clock faults on local nodes",
                 progress=progress)


def _write_then_read(host: Any, text: str, marker: str) -> tuple[int, str]:
    """Writes `text` to the file `marker` in one command and reads (and removes) it in the
    next. Asked again as a pair when an output is lost: the lost read may have removed it."""
    host.exec(["sh", "-c", f"echo {text} > {marker}"], 15.0)
    return cast("tuple[int, str]", host.exec(["sh", "-c", f"cat {marker} && rm -f {marker}"],
                                             15.0))


def cluster_refusal(cluster: Any) -> str | None:
    """Why `cluster` cannot take clock faults (one line saying what to do), or None.

    The layer must have been asked for at bring-up, and the library must be on the host of
    every node that can run a command now (checked once per node)."""
    if not cluster.spec.clock_faults:
        return ("this cluster's nodes run without the clock layer; start it with "
                "clock_faults (ClusterSpec(clock_faults=True) or [cluster] clock_faults = "
                "true in its topology)")
    checked: dict[str, str | None] = cluster.__dict__.setdefault("_clock_layer_checked", {})
    from harness.runtimes import HostDown, exec_retrying, retrying_lost_output

    for node in cluster.nodes:
        if node.state not in ("running", "paused") or node.name in checked:
            continue
        box = cluster.processes[node.name]
        marker = shlex.quote(box.env.get("FAKETIME_TIMESTAMP_FILE", "") + ".probe")
        # A file written by one command and read by the next: the spec file reaches the
        # node only where commands run in the node's own filesystem (not, e.g., in a
        # throwaway container that shares just its network, as docker does for images
        # other than ours).
        try:
            code, _ = exec_retrying(box.host, probe_argv(), 15.0)
            seen, output = retrying_lost_output(
                functools.partial(_write_then_read, box.host, node.name, marker))
        except HostDown:
            continue
        if code != 0:
            checked[node.name] = (
                f"{node.name}'s host {box.host.name} has no libfaketime ({LIBRARY_GLOB} is "
                f"missing): install the Debian package {PACKAGE} there (apt-get install "
                f"{PACKAGE})")
        elif seen != 0 or output.strip() != node.name:
            checked[node.name] = (
                f"commands on {node.name}'s host {box.host.name} run outside its filesystem "
                f"(the {cluster.spec.backend} runtime runs them in a container of their own "
                "for this node's image), so its clock cannot be set: clock faults need nodes "
                "whose host runs commands beside them (a marker written by one command was "
                f"read back by the next as exit {seen}, output {output.strip()[:200]!r})")
        else:
            checked[node.name] = None
    return next((why for why in checked.values() if why), None)
