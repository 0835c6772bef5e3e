"""Install an Airbyte connector as a local executable in its own virtual environment.

Python connectors pin their own stacks (airbyte-cdk, pydantic, jsonschema, ...) that clash
with the harness's, so each one gets a private venv under a git-ignored cache folder
(``~/.cache/hstream-conformance/connectors/<name>/``, shared by every checkout of the
machine, or ``$HSTREAM_CONFORMANCE_CACHE/connectors``).
The harness only ever talks to the connector through its entry-point executable, exactly as
the Airbyte platform talks to a connector image: argv in, JSON lines out.

An install is reused when its recorded requirements match; a half-finished one (no marker)
is discarded and redone, so an interrupted ``pip install`` never leaves a broken cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "installed.json"
# pip resolving airbyte-cdk from scratch takes ~30 s here; leave room for slow mirrors.
DEFAULT_INSTALL_TIMEOUT_S = 900.0


class InstallError(RuntimeError):
    """A connector venv could not be created or its package not installed."""


@dataclass(frozen=True)
class ConnectorPackage:
    """A connector distributed as a Python package with a console-script entry point."""

    name: str
    requirements: tuple[str, ...]
    entry_point: str
    # Local paths (e.g. a fixture package) installed as requirements; their content is
    # fingerprinted so an edit to the fixture triggers a reinstall.
    local_paths: tuple[Path, ...] = field(default=())


def cache_root() -> Path:
    """Folder holding one venv per connector (created on demand): per machine, not per
    checkout, so a fresh clone and every parallel worker reuse what was installed once
    (installs are locked and keyed by their requirements)."""
    base = os.environ.get("HSTREAM_CONFORMANCE_CACHE")
    if base:
        root = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "hstream-conformance"
    return root / "connectors"


_BUILD_LITTER = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")


def _is_litter(rel: Path) -> bool:
    return any(part in ("__pycache__", "build", "dist") or part.endswith((".egg-info", ".pyc"))
               for part in rel.parts)


def _fingerprint(paths: tuple[Path, ...]) -> str:
    """mtime+size of every source file under the local paths: cheap, enough to see edits."""
    parts: list[str] = []
    for base in paths:
        for p in sorted(base.rglob("*")):
            if p.is_file() and not _is_litter(p.relative_to(base)):
                st = p.stat()
                parts.append(f"{p.relative_to(base)}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def _wanted(package: ConnectorPackage) -> dict[str, object]:
    return {
        "requirements": list(package.requirements),
        "local_paths": [str(p) for p in package.local_paths],
        "fingerprint": _fingerprint(package.local_paths),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


# The pip step is tried this many times (the venv step once).
PIP_TRIES = 2


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two pytest processes (e.g. xdist workers) may ask for the same connector at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def installed_executable(package: ConnectorPackage, root: Path | None = None) -> Path | None:
    """The entry point of a complete, up-to-date install, or None."""
    venv = (root or cache_root()) / package.name
    exe = venv / "bin" / package.entry_point
    marker = venv / MARKER
    if not (exe.exists() and marker.exists()):
        return None
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return exe if recorded == _wanted(package) else None


def install(
    package: ConnectorPackage,
    root: Path | None = None,
    timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S,
) -> Path:
    """Create ``<root>/<name>`` with the package installed; return its entry-point path.

    Skipped when an up-to-date install is already there. The pip log is kept next to the
    venv (``install.log``) and named in the error when the install fails.
    """
    root = root or cache_root()
    venv = root / package.name
    with _locked(root / f".{package.name}.lock"):
        exe = installed_executable(package, root)
        if exe is not None:
            return exe
        if venv.exists():
            shutil.rmtree(venv)
        log_path = root / f"{package.name}.install.log"
        started = time.monotonic()
        # pip builds a local project in place (build/, *.egg-info); build from a copy so
        # the source folder, which may be a fixture in the checkout, stays clean.
        local_copies = []
        for src in package.local_paths:
            dst = venv / "src" / src.name
            shutil.copytree(src, dst, ignore=_BUILD_LITTER)
            local_copies.append(dst)
        with open(log_path, "w") as log:
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [
                    str(venv / "bin" / "python"), "-m", "pip", "install",
                    "--disable-pip-version-check", *package.requirements,
                    *[str(p) for p in local_copies],
                ],
            ]
            for argv, tries in zip(steps, (1, PIP_TRIES), strict=True):
                for attempt in range(1, tries + 1):
                    log.write("$ " + " ".join(argv) + "\n")
                    log.flush()
                    remaining = timeout_s - (time.monotonic() - started)
                    try:
                        proc = subprocess.run(
                            argv, stdout=log, stderr=subprocess.STDOUT, timeout=max(remaining, 1)
                        )
                    except subprocess.TimeoutExpired:
                        raise InstallError(
                            f"installing connector {package.name!r} took longer than "
                            f"{timeout_s:.0f}s (step: {' '.join(argv[:4])} ...); "
                            f"pip log: {log_path}"
                        ) from None
                    if proc.returncode == 0 or attempt == tries:
                        break
                    # A download from the package index can fail once on a loaded machine;
                    # the log keeps both tries.
                    log.write(f"# pip exited {proc.returncode}; trying once more\n")
                if proc.returncode != 0:
                    raise InstallError(
                        f"installing connector {package.name!r} failed (exit {proc.returncode})"
                        f" at: {' '.join(argv)}\n  pip log: {log_path}\n  fix the requirement"
                        " or the package index settings, then rerun (the cache is rebuilt)"
                    )
        exe = venv / "bin" / package.entry_point
        if not exe.exists():
            raise InstallError(
                f"connector {package.name!r} installed but has no entry point {exe.name!r} in"
                f" {exe.parent}; check the package's console_scripts; pip log: {log_path}"
            )
        (venv / MARKER).write_text(json.dumps(_wanted(package), indent=1))
        return exe


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.io.install`` installs every configured connector (for CI warm-up)."""
    from harness.io.connectors import load_connectors

    specs = load_connectors()
    for spec in specs:
        if spec.package is not None:
            exe = install(spec.package)
            print(f"{spec.name}: {exe}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
