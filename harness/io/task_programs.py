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
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

from harness.io.catalogue import Run, parse_run_log, run_log_name
from harness.io.connector_image import OUTPUT_DIR, RUN_LOG_DIR
from harness.io.connectors import ConnectorDefinition


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
    """Programs each node runs in its own container (docker backend)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from harness.images import connect

            self._client = connect()
        return self._client

    def _containers(self, cluster: Any) -> dict[str, Any]:
        """Node name -> its container, for every node started so far."""
        return {node.name: self.client.containers.get(node.container_id)
                for node in cluster.nodes if node.container_id}

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

    def runs(self, cluster: Any, defn: ConnectorDefinition, subcommand: str) -> list[Run]:
        found: list[Run] = []
        with tempfile.TemporaryDirectory(prefix="hsc-runlog-") as scratch:
            for name, container in self._containers(cluster).items():
                copied = self._file(container, f"{RUN_LOG_DIR}/{run_log_name(defn)}",
                                    Path(scratch) / name)
                if copied is not None:
                    found += parse_run_log(copied.read_text(), name, subcommand)
        return found

    def live_pid(self, cluster: Any, run: Run) -> int | None:
        """The pid on this machine of the run's process, while it runs."""
        import docker.errors

        try:
            top = self._containers(cluster)[run.where].top()
        except (KeyError, docker.errors.APIError):
            return None  # a stopped container runs nothing
        column = top["Titles"].index("PID")
        for process in top["Processes"] or []:
            pid = int(process[column])
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspids = next((line.split()[1:] for line in status.splitlines()
                           if line.startswith("NSpid:")), [])
            if nspids and nspids[-1] == str(run.pid) and alive(pid):
                return pid
        return None

    def output_path(self, name: str) -> str:
        return f"{OUTPUT_DIR}/{name}"

    def output_rows(self, cluster: Any, path: str, query: str) -> list[list[Any]]:
        """The rows of every node's copy of `path`: a sink task moved to another node (its
        node killed) goes on writing in that node's container."""
        rows: list[list[Any]] = []
        for name, container in self._containers(cluster).items():
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
