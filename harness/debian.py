"""Debian tools the harness uses, installed on first use where the session may (as root, with
apt-get), and otherwise refused with the one command that installs them.

A fault or a build that needs `debootstrap`, `faketime`, `stress-ng` or `fusermount3` asks
`ensure_tools` first; on a fresh CI machine (root) the package is installed and the run goes
on, on a developer's machine (not root) the caller's check fails or skips naming the command.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from harness import HarnessError

Progress = Callable[[str], None]

# apt-get holds its own lock and fails (does not wait) when another apt-get runs: parallel
# workers asking for the same tool take turns on this one first.
_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "hstream-conformance-apt.lock"


class ToolMissing(HarnessError):
    """A Debian tool is absent and cannot be installed here; the message says how to."""


def _present(tool: str) -> bool:
    """A tool is a command on PATH or, for libraries, an absolute file path."""
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


def missing_tools(tools: Mapping[str, str]) -> dict[str, str]:
    """tool -> Debian package, for the tools not present."""
    return {tool: pkg for tool, pkg in tools.items() if not _present(tool)}


def install_hint(tools: Mapping[str, str]) -> str:
    packages = " ".join(sorted(set(tools.values())))
    return f"apt-get install {packages}"


def ensure_tools(tools: Mapping[str, str], *, why: str, progress: Progress = print) -> None:
    """Make every tool present (tool: command name or absolute file -> its Debian package).

    Installs the missing packages with apt-get when running as root on Debian (updating the
    package lists once if the first try fails, as on a fresh machine); otherwise, or if that
    fails, raises `ToolMissing` naming `why` and the install command."""
    missing = missing_tools(tools)
    if not missing:
        return
    hint = f"{why} needs {', '.join(sorted(missing))}: install with `{install_hint(missing)}`"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolMissing(hint)
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = missing_tools(tools)  # another worker may have installed them meanwhile
        if not missing:
            return
        packages = sorted(set(missing.values()))
        progress(f"{why}: installing {' '.join(packages)} with apt-get (running as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        done = subprocess.run(install, capture_output=True, text=True, env=env)
        if done.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            done = subprocess.run(install, capture_output=True, text=True, env=env)
    still = missing_tools(tools)
    if done.returncode != 0 or still:
        raise ToolMissing(f"{hint}; apt-get failed: {done.stderr.strip()[-500:]}")
    progress(f"{why}: installed {' '.join(packages)}")
