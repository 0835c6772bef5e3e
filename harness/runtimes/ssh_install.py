"""What an ssh host needs before a cluster runs there: the launcher (harness.runtimes.
ssh_launcher), and the reference server in a venv of ours made from the project's wheels,
installed offline. Both are skipped when already there: the launcher's file name carries its
hash, the venv a stamp of the wheels' inputs, so a second cluster on the same hosts uploads
nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from harness import HarnessError
from harness.images import (
    PROJECT_WHEEL_PREFIX,
    dependency_hash,
    project_source_hash,
    wheels_snapshot,
)
from harness.runtimes.inventory import HostEntry
from harness.runtimes.ssh_connection import Session

ROOT = "/tmp/hstream-conformance"  # per-cluster directories, the launcher, uploaded wheels
WHEELS_DIR = f"{ROOT}/wheels"
ROOT_VENV = "/opt/hstream-conformance/venv"
STAMP = "hstream-conformance-wheels"
INSTALL_TIMEOUT_S = 900.0


class HostNotReady(HarnessError):
    """A host lacks what the runtime needs; the message names it and what to install."""


def launcher_file() -> tuple[Path, str]:
    """The launcher here and the path of this version of it on a host."""
    local = Path(__file__).with_name("ssh_launcher.py")
    return local, f"{ROOT}/launcher-{hashlib.sha256(local.read_bytes()).hexdigest()[:12]}.py"


def ensure_launcher(session: Session) -> str:
    """Upload the launcher if this version is not there; check python3 runs it."""
    local, remote = launcher_file()
    name = session.entry.name
    with session.sftp() as sftp:
        try:
            sftp.stat(remote)
        except FileNotFoundError:
            session.run(["mkdir", "-p", ROOT])
            sftp.put(str(local), f"{remote}.part")
            sftp.posix_rename(f"{remote}.part", remote)
    status, output = session.run(["python3", remote, "hello"])
    if status == 127:
        raise HostNotReady(f"host {name} has no python3: install it there (`apt-get install "
                           "python3 python3-venv`); the harness starts processes with it")
    if status != 0:
        raise HostNotReady(f"host {name}: the launcher failed: {_last_line(output)}")
    return remote


def wanted_stamp() -> str:
    return f"{dependency_hash()} {project_source_hash()}"


class Wheels:
    """The project's wheels, built once however many hosts need them."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self._lock = threading.Lock()
        self._wheels: list[Path] | None = None

    def __call__(self) -> list[Path]:
        with self._lock:
            if self._wheels is None:
                self._wheels = wheels_snapshot(progress=self.progress)
            return self._wheels


def ensure_python(session: Session, wheels: Wheels, stamp: str) -> str:
    """The Python that runs a "python" argv on this host, the reference server importable."""
    entry = session.entry
    if entry.preinstalled:
        python = entry.preinstalled if isinstance(entry.preinstalled, str) else "python3"
        status, output = session.run([python, "-c", "import refserver, harness.runtimes"])
        if status != 0:
            raise HostNotReady(
                f"host {entry.name}: {python} cannot import the reference server "
                f"({_last_line(output)}): install hstream-conformance there or drop "
                f"`preinstalled` from {session.source}")
        return python
    venv = _venv(session, entry)
    with session.sftp() as sftp:
        try:
            with sftp.open(f"{venv}/{STAMP}") as found:
                have = found.read().decode().strip()
        except OSError:
            have = ""
    if have == stamp:
        return f"{venv}/bin/python"
    fresh = have.split(" ")[0] != stamp.split(" ")[0]  # dependencies changed: a new venv
    files = [w for w in wheels() if fresh or w.name.startswith(PROJECT_WHEEL_PREFIX)]
    wheels.progress(f"host {entry.name}: installing the reference server in {venv} "
                    f"({len(files)} wheel(s))")
    if fresh:
        _check(session, ["python3", "-m", "venv", "--clear", venv], "python3 -m venv",
               "install python3-venv there, or install hstream-conformance and set preinstalled")
    _check(session, ["mkdir", "-p", WHEELS_DIR], "mkdir", "check the disk and /tmp there")
    with session.sftp() as sftp:
        present = {a.filename: a.st_size for a in sftp.listdir_attr(WHEELS_DIR)}
        for wheel in files:
            if wheel.name.startswith(PROJECT_WHEEL_PREFIX) \
                    or present.get(wheel.name) != wheel.stat().st_size:
                sftp.put(str(wheel), f"{WHEELS_DIR}/{wheel.name}")
    project = [f"{WHEELS_DIR}/{w.name}" for w in files if w.name.startswith(PROJECT_WHEEL_PREFIX)]
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index",
           "--disable-pip-version-check", "--find-links", WHEELS_DIR]
    pip += project if fresh else ["--no-deps", "--force-reinstall", *project]
    _check(session, pip, "pip install", "the wheels are built for this machine's Python "
           "(same minor version needed there); or install hstream-conformance there and set "
           "preinstalled", timeout_s=INSTALL_TIMEOUT_S)
    with session.sftp() as sftp, sftp.open(f"{venv}/{STAMP}", "w") as out:
        out.write(stamp)
    return f"{venv}/bin/python"


def _venv(session: Session, entry: HostEntry) -> str:
    if entry.user == "root":
        return ROOT_VENV
    with session.sftp() as sftp:
        return f"{sftp.normalize('.')}/.hstream-conformance/venv"


def _check(session: Session, argv: list[str], what: str, fix: str,
           timeout_s: float = 120.0) -> None:
    status, output = session.run(argv, timeout_s=timeout_s)
    if status != 0:
        raise HostNotReady(f"host {session.entry.name}: {what} failed (exit {status}: "
                           f"{_last_line(output)}): {fix}")


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return json.dumps(lines[-1])[1:-1] if lines else "no output"
