"""Session labels, a registry of what each cluster started, and the sweep of leftovers.

Every cluster writes `reports/.sessions/<cluster label>/`:
- `meta.json`: owner pid (+ its start time), whether it is detached (`cluster up`), the
  backend, the data directories and external Toxiproxy proxies to remove, the last status;
- `procs.jsonl`: one line per started process (pid, start time, name, argv).
Every process also carries the label in its environment (`HSTREAM_CONFORMANCE_SESSION`).

A run killed with SIGKILL cannot tear down; the next run's `sweep()` finds clusters whose
owner is gone and kills their processes — only those whose start time *and* environment
label still match the record, so a recycled pid is never touched. Detached clusters are
swept only by `cluster down` (or `sweep(include_detached=True)`). Backends that start
things the registry cannot kill by pid (containers, networks) add a sweeper with
`register_sweeper`; it receives the labels of the stale clusters.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness import HarnessError
from harness.topology import SESSION_ENV

REPORTS_ENV = "HSTREAM_CONFORMANCE_REPORTS"


def reports_root() -> Path:
    """Where runs write output: $HSTREAM_CONFORMANCE_REPORTS, else ./reports."""
    return Path(os.environ.get(REPORTS_ENV) or Path.cwd() / "reports")


def sessions_root() -> Path:
    return reports_root() / ".sessions"


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot), None if it does not exist.

    Paired with the pid it identifies a process uniquely, which a pid alone does not.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may contain spaces and parentheses; fields resume after the last ')'.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])  # field 22 overall


def process_label(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = f"{SESSION_ENV}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def is_same_process(pid: int, start_time: int | None) -> bool:
    current = process_start_time(pid)
    if current is None:
        return False
    if _is_zombie(pid):
        return False
    return start_time is None or current == start_time


def owner_label() -> str:
    """This run as "<hostname>:<pid>:<start time>": what runtimes label the objects they make
    outside the pid registry (containers, processes on other hosts) with."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the run an `owner_label` names still runs (another machine's run: assume so)."""
    host, _, rest = (owner or "").partition(":")
    if not owner:
        return False
    if host != socket.gethostname():
        return True
    pid, _, start = rest.partition(":")
    try:
        return is_same_process(int(pid), int(start) if start not in ("", "None") else None)
    except ValueError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@dataclass
class RecordedProcess:
    pid: int
    start_time: int | None
    name: str
    argv: list[str]

    def alive(self) -> bool:
        return is_same_process(self.pid, self.start_time)


class ClusterRecord:
    """The on-disk record of one cluster (see the module docstring)."""

    def __init__(self, label: str, root: Path | None = None) -> None:
        self.label = label
        self.dir = (root or sessions_root()) / label
        self.meta_path = self.dir / "meta.json"
        self.procs_path = self.dir / "procs.jsonl"
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        label: str,
        session: str,
        backend: str,
        detached: bool = False,
        root: Path | None = None,
        owner_pid: int | None = None,
    ) -> ClusterRecord:
        record = cls(label, root)
        record.dir.mkdir(parents=True, exist_ok=True)
        owner = owner_pid or os.getpid()
        record.write_meta(
            {
                "label": label,
                "session": session,
                "backend": backend,
                "owner_pid": owner,
                "owner_start_time": process_start_time(owner),
                "detached": detached,
                "created": time.time(),
                "data_dirs": [],
                "external_proxies": [],
                "status": None,
            }
        )
        return record

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.meta_path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        with self._lock:
            tmp = self.meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            tmp.replace(self.meta_path)

    def update_meta(self, **changes: Any) -> None:
        meta = self.meta()
        meta.update(changes)
        self.write_meta(meta)

    def add_process(self, pid: int, name: str, argv: Iterable[str]) -> None:
        line = {"pid": pid, "start_time": process_start_time(pid), "name": name,
                "argv": list(argv)}
        with self._lock, self.procs_path.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def processes(self) -> list[RecordedProcess]:
        try:
            lines = self.procs_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                data = json.loads(line)
                found.append(RecordedProcess(data["pid"], data.get("start_time"),
                                             data["name"], data.get("argv", [])))
        return found

    def owner_alive(self) -> bool:
        meta = self.meta()
        if not meta:
            return False
        return is_same_process(int(meta["owner_pid"]), meta.get("owner_start_time"))

    def live_processes(self) -> list[RecordedProcess]:
        """Recorded processes still running *and* still carrying this cluster's label."""
        return [
            p for p in self.processes()
            if p.alive() and process_label(p.pid) in (self.label, self.session)
        ]

    @property
    def session(self) -> str:
        # A cluster label is "<session>-<cluster name>"; processes carry the session label.
        return str(self.meta().get("session") or self.label)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def all_records(root: Path | None = None) -> list[ClusterRecord]:
    base = root or sessions_root()
    if not base.is_dir():
        return []
    return [ClusterRecord(d.name, base) for d in sorted(base.iterdir()) if d.is_dir()]


def terminate(processes: Iterable[RecordedProcess], grace_s: float = 3.0) -> list[int]:
    """SIGTERM each process group, then SIGKILL what is still there after `grace_s`."""
    targets = [p for p in processes if p.alive()]
    for proc in targets:
        _signal_group(proc.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive() for p in targets):
        time.sleep(0.05)
    for proc in targets:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(p.alive() for p in targets):
        time.sleep(0.05)
    return [p.pid for p in targets]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Every harness process leads its own session/process group (start_new_session), so the
    # group signal also reaches anything it spawned.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class SweepResult:
    clusters: list[str]
    killed_pids: list[int]


def teardown_record(record: ClusterRecord) -> list[int]:
    """Remove everything a record says its cluster started; returns the pids it killed."""
    meta = record.meta()
    killed = terminate(record.live_processes())
    for proxy in meta.get("external_proxies", []):
        _delete_external_proxy(proxy["api_url"], proxy["name"])
    for data_dir in meta.get("data_dirs", []):
        # A lazy disk (harness.lazydisk) of a killed run leaves a dead mount in its data dir.
        from harness.lazydisk.mounts import unmount_under

        unmount_under(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    record.remove()
    return killed


def _delete_external_proxy(api_url: str, name: str) -> None:
    import requests

    with contextlib.suppress(requests.RequestException):
        requests.delete(f"{api_url.rstrip('/')}/proxies/{name}", timeout=3)


def sweep(
    root: Path | None = None, include_detached: bool = False, only: str | None = None
) -> SweepResult:
    """Tear down clusters whose owner died (all, or only the cluster labelled `only`)."""
    stale: list[ClusterRecord] = []
    for record in all_records(root):
        if only is not None and record.label != only:
            continue
        meta = record.meta()
        if only is None and record.owner_alive() and not meta.get("detached"):
            continue
        if meta.get("detached") and not include_detached and only is None:
            continue
        stale.append(record)
    labels = [r.label for r in stale]
    by_runtime: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for record in stale:
        meta = record.meta()
        by_runtime.setdefault(str(meta.get("backend") or "local"), []).append((record.label, meta))
    killed: list[int] = []
    for record in stale:
        killed += teardown_record(record)
    # What the pid registry cannot remove (containers, networks, processes on other hosts)
    # is removed by the runtime that made it.
    for name, found in by_runtime.items():
        _runtime_sweep(name, [label for label, _ in found], [meta for _, meta in found])
    return SweepResult(clusters=labels, killed_pids=killed)


def _runtime_sweep(runtime: str, labels: list[str], metas: list[dict[str, Any]]) -> None:
    from harness.runtimes import runtime_class

    try:
        cls = runtime_class(runtime)
    except HarnessError:
        return  # a runtime no longer installed: its pid-registry part is swept already
    cls.sweep(labels, metas)


# -- teardown on exit and on SIGTERM/SIGHUP ----------------------------------------------
class Stoppable(Protocol):
    def stop(self) -> None: ...


_LIVE: list[Stoppable] = []
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def track(cluster: Stoppable) -> None:
    """Stop `cluster` at interpreter exit and on SIGTERM/SIGHUP if nobody did before."""
    with _LIVE_LOCK:
        _LIVE.append(cluster)
    install_signal_teardown()


def untrack(cluster: Stoppable) -> None:
    with _LIVE_LOCK:
        if cluster in _LIVE:
            _LIVE.remove(cluster)


def stop_all() -> None:
    with _LIVE_LOCK:
        live = list(reversed(_LIVE))
        _LIVE.clear()
    for cluster in live:
        with contextlib.suppress(Exception):
            cluster.stop()


def install_signal_teardown() -> None:
    """SIGTERM and SIGHUP stop every tracked cluster, then end the process as the signal would.

    SIGINT stays Python's KeyboardInterrupt, which unwinds through fixtures and `with`
    blocks; `atexit` is the last net for both.
    """
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _HANDLERS_INSTALLED = True
    atexit.register(stop_all)

    def handler(signum: int, frame: object) -> None:
        stop_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_DFL, None):
            signal.signal(sig, handler)

