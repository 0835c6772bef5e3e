"""A Host over SSH: one inventory machine, whose processes the launcher (ssh_launcher) starts,
signals and sweeps; exit statuses and logs come back over SFTP, commands run as argv."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.runtimes import ClusterStartError, ProcHandle
from harness.runtimes.ssh_connection import Session
from harness.runtimes.ssh_install import ROOT, ensure_launcher
from harness.targets import ProcessSpec


class SshHost:
    """One inventory machine; the processes of cluster `label` live in ROOT/label there."""

    def __init__(self, session: Session, label: str) -> None:
        self.name = session.entry.name
        self.session = session
        self.label = label
        self.dir = f"{ROOT}/{label}"
        self.launcher = ""  # its path there, once uploaded (then there is something to sweep)
        self.python = "python3"
        self._offsets: dict[str, int] = {}

    def _launch(self, *args: str, stdin: bytes = b"") -> tuple[int, str]:
        return self.session.run(["python3", self.launcher, *args], stdin)

    def spawn(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> ProcHandle:
        argv = [self.python if spec.argv[0] == "python" else spec.argv[0], *spec.argv[1:]]
        request = {"name": spec.name, "argv": argv, "env": dict(env), "cwd": self.dir,
                   "log": f"{self.dir}/logs/{spec.name}.log"}
        status, output = self._launch("spawn", ROOT, self.label,
                                      stdin=json.dumps(request).encode())
        try:
            answer = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"error": f"the launcher answered {output.strip()!r} (exit {status})"}
        if status != 0 or answer.get("error"):
            raise ClusterStartError(f"cannot start {spec.name} on host {self.name}: "
                                    f"{answer.get('error') or output.strip()}")
        return ProcHandle(spec.name, self.name, f"{answer['pid']}:{answer['start_time']}",
                          log_path, {"pid": answer["pid"], "address": self.session.entry.address})

    def signal(self, handle: ProcHandle, sig: signal.Signals) -> None:
        self._launch("signal", ROOT, self.label, *handle.ref.split(":"), str(int(sig)))

    def exit_status(self, handle: ProcHandle) -> int | None:
        pid, start = handle.ref.split(":")
        for _ in range(20):  # a dead process is a zombie until its supervisor reaps it
            with self.session.sftp() as sftp:
                with contextlib.suppress(FileNotFoundError), \
                        sftp.open(f"{self.dir}/procs/{pid}.exit") as found:
                    return int(found.read())
                try:
                    with sftp.open(f"/proc/{pid}/stat") as stat:
                        fields = stat.read(4096).decode().rsplit(")", 1)[1].split()
                    if fields[0] not in "ZX" and fields[19] == start:
                        return None
                except (OSError, EOFError, IndexError):
                    pass  # gone, or going while we read its stat (SFTP says only "Failure")
            time.sleep(0.05)
        return 255  # gone without a status: its supervisor was killed too (a sweep, a reboot)

    def exec(self, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        sudo = ["sudo", "-n"] if self.session.entry.sudo else []
        return self.session.run([*sudo, *argv], timeout_s=timeout_s)

    def read_log(self, handle: ProcHandle) -> str:
        """Appends what the remote log gained since the last read to the local copy."""
        remote = f"{self.dir}/logs/{handle.name}.log"
        offset = self._offsets.get(remote, 0)
        gained = b""
        with self.session.sftp() as sftp, contextlib.suppress(FileNotFoundError), \
                sftp.open(remote) as log:
            log.seek(offset)
            gained = log.read()
        handle.log_path.parent.mkdir(parents=True, exist_ok=True)
        with handle.log_path.open("ab" if offset else "wb") as out:
            out.write(gained)
        self._offsets[remote] = offset + len(gained)
        return handle.log_path.read_text(errors="replace")

    def put(self, local: Path, remote: str) -> None:
        with self.session.sftp() as sftp:
            sftp.put(str(local), remote)

    def labelled(self) -> list[int]:
        """Pids of this cluster's live processes here (none after teardown)."""
        return list(json.loads(self._launch("list", ROOT, self.label)[1]))

    def sweep(self, labels: Sequence[str]) -> None:
        self.launcher = self.launcher or ensure_launcher(self.session)
        self.session.run(["python3", self.launcher, "sweep", ROOT, *labels], timeout_s=60.0)
