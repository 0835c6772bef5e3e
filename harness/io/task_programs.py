"""A reference cluster's connector programs as a test sees them: their runs (the catalogue's
run logs, harness.io.catalogue), a run's process on this machine (to kill it, to see it gone)
and what a sink wrote into an SQLite file.

- ``LocalPrograms`` (local backend): the nodes run the host's connector venvs; run logs are
  files of a folder the test made, a run's pid is its pid here, outputs are files here.
- ``ContainerPrograms`` (docker backend): each node runs the programs of its image in its own
  container (harness.io.connector_image), so the run logs and outputs are files of the node
  containers, read with the Docker API (a killed node's container still holds its files). A
  run is known by its node and its pid in that container; its process on this machine is the
  one of the container whose NSpid ends with that pid, which the crash fault can SIGKILL like
  any process of this machine.

When the engine runs on this machine (as the crash fault already needs), a running container's
files are read through its root as this machine sees it (``/proc/<its first process>/root``)
and its processes are those of its cgroup: no call to the engine, which on a loaded machine
answers a copy or a `top` in seconds, about as long as a connector's whole read takes (a
6-worker docker run found reads over before the fault could hit them). A stopped container,
or an engine elsewhere, is read through the Docker API as before.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol, TypeVar

from harness.io.catalogue import Run, parse_run_log, run_log_name
from harness.io.connector_image import OUTPUT_DIR, RUN_LOG_DIR
from harness.io.connectors import ConnectorDefinition

T = TypeVar("T")


def alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (a zombie has already exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sqlite_rows(path: Path, query: str) -> list[list[Any]]:
    """`query`'s rows, or none while the file or its table is not there yet."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        try:
            return [list(row) for row in conn.execute(query)]
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise


class Programs(Protocol):
    def runs(self, cluster: Any, defn: ConnectorDefinition, subcommand: str) -> list[Run]: ...

    def live_pid(self, cluster: Any, run: Run) -> int | None: ...

    def output_path(self, name: str) -> str: ...

    def output_rows(self, cluster: Any, path: str, query: str) -> list[list[Any]]: ...


class LocalPrograms:
    """Programs the nodes run on this machine; `folder` holds their run logs and outputs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def run_log(self, defn: ConnectorDefinition) -> Path:
        return self.folder / run_log_name(defn)

    def runs(self, cluster: Any, defn: ConnectorDefinition, subcommand: str) -> list[Run]:
        path = self.run_log(defn)
        return parse_run_log(path.read_text(), "", subcommand) if path.exists() else []

    def live_pid(self, cluster: Any, run: Run) -> int | None:
        return run.pid if alive(run.pid) else None

    def output_path(self, name: str) -> str:
        return str(self.folder / name)

    def output_rows(self, cluster: Any, path: str, query: str) -> list[list[Any]]:
        return sqlite_rows(Path(path), query)


# Run in a node's container: its sqlite3 takes the file's locks like any reader, so a sink
# writing meanwhile is read at a commit, never half-way (and a hot journal is rolled back).
_DUMP = """
import json, os, sqlite3, sys
path, query = sys.argv[1:3]
rows = []
if os.path.exists(path):
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = [list(row) for row in conn.execute(query)]
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
print(json.dumps(rows))
"""


class ContainerPrograms:
    """Programs each node runs in its own container (docker backend). `host_view=False`
    reads every container through the Docker API, as for an engine on another machine."""

    def __init__(self, client: Any = None, host_view: bool = True) -> None:
        self._client = client
        self.host_view = host_view
        self._held: dict[str, Any] = {}  # container id -> its Container
        self._first_pid: dict[str, int] = {}  # container id -> its first process, here

    @property
    def client(self) -> Any:
        if self._client is None:
            from harness.images import connect

            self._client = connect()
        return self._client

    def _containers(self, cluster: Any) -> dict[str, Any]:
        """Node name -> its container, for every node started so far (each looked up once:
        a node restarted in place keeps its container)."""
        found = {}
        for node in cluster.nodes:
            if node.container_id:
                held = self._held.get(node.container_id)
                if held is None:
                    held = self._held[node.container_id] = self.client.containers.get(
                        node.container_id)
                found[node.name] = held
        return found

    def _first(self, container: Any) -> int | None:
        """The pid on this machine of the running container's first process (whose root,
        /proc/<pid>/root, is the container's), or None: stopped, or the engine is not on
        this machine. It is asked of the engine once per start of the container, and
        checked on every use by its cgroup, which names the container."""
        if not self.host_view:
            return None
        pid = self._first_pid.get(container.id)
        if pid is None or not _in_container(pid, container.id):
            container.reload()
            pid = container.attrs.get("State", {}).get("Pid") or 0
            if not pid or not _in_container(pid, container.id):
                self._first_pid.pop(container.id, None)
                return None
            self._first_pid[container.id] = pid
        return pid

    def _through_root(self, container: Any, path: str, read: Callable[[Path], T]) -> T | None:
        """`read` of the container's file `path` through its root here, or None when it
        cannot be read that way (then the caller asks the engine): not running, or it
        stopped during the read (its root is gone then, and a missing file proves
        nothing)."""
        pid = self._first(container)
        if pid is None:
            return None
        try:
            got = read(Path(f"/proc/{pid}/root") / path.lstrip("/"))
        except (OSError, sqlite3.Error):
            got = None
        return got if _in_container(pid, container.id) else None

    def _file(self, container: Any, path: str, into: Path) -> Path | None:
        """Copy `path` out of the container (running or not) into folder `into`."""
        import docker.errors

        try:
            chunks, _ = container.get_archive(path)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            tar.extractall(into, filter="data")
        return into / Path(path).name

    def _text(self, container: Any, path: str, scratch: Path) -> str | None:
        """The text of file `path` of the container, or None if it has none."""
        text = self._through_root(container, path,
                                  lambda at: at.read_text() if at.exists() else "")
        if text is not None:
            return text or None
        copied = self._file(container, path, scratch)
        return copied.read_text() if copied is not None else None

    def runs(self, cluster: Any, defn: ConnectorDefinition, subcommand: str) -> list[Run]:
        found: list[Run] = []
        with tempfile.TemporaryDirectory(prefix="hsc-runlog-") as scratch:
            for name, container in self._containers(cluster).items():
                text = self._text(container, f"{RUN_LOG_DIR}/{run_log_name(defn)}",
                                  Path(scratch) / name)
                if text is not None:
                    found += parse_run_log(text, name, subcommand)
        return found

    def live_pid(self, cluster: Any, run: Run) -> int | None:
        """The pid on this machine of the run's process, while it runs: among the processes
        of the container's cgroup, else (an engine elsewhere, or a process in a nested
        cgroup) among those the engine's `top` lists."""
        import docker.errors

        container = self._containers(cluster).get(run.where)
        if container is None:
            return None
        first = self._first(container)
        found = _nspid_match(_cgroup_procs(first) or [], run.pid) if first is not None else None
        if found is not None:
            return found
        try:
            top = container.top()
        except docker.errors.APIError:
            return None  # a stopped container runs nothing
        column = top["Titles"].index("PID")
        return _nspid_match([int(p[column]) for p in top["Processes"] or []], run.pid)

    def output_path(self, name: str) -> str:
        return f"{OUTPUT_DIR}/{name}"

    def output_rows(self, cluster: Any, path: str, query: str) -> list[list[Any]]:
        """The rows of every node's copy of `path`: a sink task moved to another node (its
        node killed) goes on writing in that node's container."""
        rows: list[list[Any]] = []
        for name, container in self._containers(cluster).items():
            # sqlite's locks hold across the container's boundary (one kernel, one file):
            # a sink writing meanwhile is read at a commit, as in the container
            got = self._through_root(container, path, lambda at: sqlite_rows(at, query))
            if got is not None:
                rows += got
                continue
            container.reload()
            if container.status == "running":
                result = container.exec_run(["python3", "-c", _DUMP, path, query], demux=True)
                out, err = result.output
                if result.exit_code != 0:
                    raise RuntimeError(f"reading {path} in {name}'s container failed: "
                                       f"{(err or b'').decode(errors='replace')[-2000:]}")
                rows += json.loads(out)
                continue
            with tempfile.TemporaryDirectory(prefix="hsc-output-") as scratch:
                # The file with its journal: an interrupted transaction is rolled back here.
                copied = self._file(container, path, Path(scratch))
                for suffix in ("-journal", "-wal"):
                    self._file(container, path + suffix, Path(scratch))
                if copied is not None:
                    rows += sqlite_rows(copied, query)
        return rows


def _nspid_match(pids: list[int], inner: int) -> int | None:
    """The one of `pids` (of this machine) that is pid `inner` in its own namespace, alive."""
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspids = next((line.split()[1:] for line in status.splitlines()
                       if line.startswith("NSpid:")), [])
        if nspids and nspids[-1] == str(inner) and alive(pid):
            return pid
    return None


def _in_container(pid: int, container_id: str) -> bool:
    """Whether process `pid` of this machine is in the container's cgroup (its cgroup path
    names the container's id, with the cgroupfs and the systemd drivers alike)."""
    try:
        return container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def _cgroup_procs(pid: int) -> list[int] | None:
    """The pids, on this machine, of the processes in process `pid`'s cgroup (v2, or v1's
    pids controller), or None if it cannot be read."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        for base in (("/sys/fs/cgroup/pids",) if "pids" in controllers.split(",") else
                     ("/sys/fs/cgroup", "/sys/fs/cgroup/unified") if not controllers else ()):
            try:
                text = Path(f"{base}{group}/cgroup.procs").read_text()
            except OSError:
                continue
            return [int(p) for p in text.split()]
    return None
