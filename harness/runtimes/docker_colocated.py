"""A process run inside another process's container (`docker exec`), for the lazy disk.

A FUSE mount lives in the mount namespace of the container that made it, and an in-memory
layer dies with its container: so on docker the store of a cluster with disk faults runs
in the lazy disk's container (harness.targets.reference: the disk mounts over the store's
data directory). The container's main process is the lazy disk; the store is a second
process there, started by `docker exec` and signalled by its pid inside the container, so
a kill -9 of the store (kill-store, crash-lose-unsynced) leaves the disk and what it holds
in memory alone, and the next start finds the same mount.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors

from harness.runtimes import ExecOutputLost, HostDown, ProcHandle, exec_retrying
from harness.targets import ProcessSpec

if TYPE_CHECKING:
    from harness.runtimes.docker import DockerHost

# The in-container files of a co-located process: its pid (what a signal is sent to) and
# its log (every incarnation appended), outside the lazy disk's mount.
RUN_DIR = "/run/hstream-conformance"
# A freshly exec'd shell writes its pid at once; a signal sent sooner waits this long for it.
PIDFILE_WAIT_S = 5.0


class DockerExecHost:
    """A Host whose processes run in `main`'s container (started by `main` first)."""

    def __init__(self, main: DockerHost, process: str) -> None:
        self.main = main
        self.process = process
        self.name = main.name  # the container it runs in
        self.ip = main.ip
        self._pidfile = f"{RUN_DIR}/{process}.pid"
        self._log = f"{RUN_DIR}/{process}.log"

    def _container(self) -> Any:
        status = self.main._status() if self.main.container is not None else "absent"
        if status != "running":
            raise HostDown(f"{self.name} (the container {self.process} runs in) is {status}")
        return self.main.container

    def spawn(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> ProcHandle:
        container = self._container()
        api = self.main.runtime.client.api
        # The shell records its pid, then becomes the process: the pid is the process's own.
        script = (f"mkdir -p {RUN_DIR} && echo $$ > {self._pidfile} && "
                  f"exec {shlex.join(spec.argv)} >> {self._log} 2>&1")
        with contextlib.suppress(docker.errors.APIError):
            container.exec_run(["rm", "-f", self._pidfile])
        exec_id = api.exec_create(container.id, ["sh", "-c", script], environment=dict(env),
                                  workdir="/data")["Id"]
        api.exec_start(exec_id, detach=True)
        return ProcHandle(spec.name, self.name, exec_id, log_path,
                          {"container_id": container.id, "ip": self.ip,
                           "pid": self._pid(container)})

    def _pid(self, container: Any) -> int:
        deadline = time.monotonic() + PIDFILE_WAIT_S
        while True:
            code, output = container.exec_run(["cat", self._pidfile])
            text = output.decode(errors="replace").strip()
            if code == 0 and text.isdigit():
                return int(text)
            if time.monotonic() > deadline:
                raise HostDown(f"{self.process} in {self.name} wrote no pid to {self._pidfile} "
                               f"within {PIDFILE_WAIT_S:g}s: {text}")
            time.sleep(0.05)

    def signal(self, handle: ProcHandle, sig: signal.Signals) -> None:
        # Only the process: the container's main process (the lazy disk) is left running.
        with contextlib.suppress(HostDown, docker.errors.APIError):
            self._container().exec_run(["kill", f"-{sig.name[3:]}", str(handle.facts["pid"])])

    def exit_status(self, handle: ProcHandle) -> int | None:
        # A container that stopped ended every process exec'd in it.
        status = self.main._status() if self.main.container is not None else "absent"
        if status not in ("running", "paused"):
            return -1
        try:
            state = self.main.runtime.client.api.exec_inspect(handle.ref)
        except docker.errors.NotFound:
            return -1
        if state.get("Running"):
            return None
        code = state.get("ExitCode")
        return -1 if code is None else int(code)

    def exec(self, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        return self.main.exec(argv, timeout_s)

    def read_log(self, handle: ProcHandle) -> str:
        # Through the main container's exec, which tells a lost output from an empty log:
        # a lost one must not overwrite the copy taken before.
        try:
            self._container()
            code, text = exec_retrying(self.main, ["cat", self._log])
        except (HostDown, ExecOutputLost, docker.errors.APIError):
            code, text = 1, ""
        if code != 0:
            return handle.log_path.read_text(errors="replace") if handle.log_path.exists() \
                else ""
        handle.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle.log_path.write_text(text)
        return text

    def put(self, local: Path, remote: str) -> None:
        self.main.put(local, remote)
