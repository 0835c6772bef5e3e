"""Install an Airbyte connector as a local executable in its own virtual environment.

Python connectors pin their own stacks (airbyte-cdk, pydantic, jsonschema, ...) that clash
with the harness's, so each one gets a private venv under a cache folder outside the checkout
(``~/.cache/hstream-conformance/connectors/<name>-<digest>/``, or
``$HSTREAM_CONFORMANCE_CACHE/connectors``), shared by every checkout of the machine.
The harness only ever talks to the connector through its entry-point executable, exactly as
the Airbyte platform talks to a connector image: argv in, JSON lines out.

A venv is named by a digest of what it holds -- the requirements, the Python version and the
*content* of its local package folders -- not by where a checkout keeps them: two clones of
the same commit share one venv, and a clone with an edited fixture gets a venv of its own
instead of rebuilding (and so evicting) another checkout's. An install is reused when its
marker is there; a half-finished one (no marker) is discarded and redone, so an interrupted
``pip install`` never leaves a broken cache. Venvs of a connector unused for
``STALE_AFTER_S`` are removed when another of its venvs is installed.
"""

from __future__ import annotations

import fcntl
import hashlib
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

from harness import machine_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "installed.json"
# pip resolving airbyte-cdk from scratch takes ~30 s here; leave room for slow mirrors.
DEFAULT_INSTALL_TIMEOUT_S = 900.0
# A connector's venv that no run has used for this long is removed when another of its
# venvs is installed (each edit of a local package leaves one behind).
STALE_AFTER_S = 14 * 24 * 3600.0


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
    return machine_cache() / "connectors"


# What pip leaves in a local project it builds: never copied into a build.
BUILD_LITTER = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")


def _is_litter(rel: Path) -> bool:
    return any(part in ("__pycache__", "build", "dist") or part.endswith((".egg-info", ".pyc"))
               for part in rel.parts)


def _content_digest(paths: tuple[Path, ...]) -> str:
    """sha256 over every source file under the local paths, by relative path and bytes: the
    same sources in two checkouts (or after a fresh clone resets mtimes) give one digest."""
    digest = hashlib.sha256()
    for base in paths:
        digest.update(f"\0{base.name}\0".encode())
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(base)
            if p.is_file() and not _is_litter(rel):
                digest.update(f"{rel}\0".encode())
                digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def _wanted(package: ConnectorPackage) -> dict[str, object]:
    """What the venv holds (its marker's content); the venv's name is a digest of it."""
    return {
        "requirements": list(package.requirements),
        "local_packages": [p.name for p in package.local_paths],
        "content": _content_digest(package.local_paths),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def venv_path(package: ConnectorPackage, root: Path | None = None) -> Path:
    """Where this package's venv lives: ``<root>/<name>-<digest of what it holds>``."""
    wanted = json.dumps(_wanted(package), sort_keys=True).encode()
    return (root or cache_root()) / f"{package.name}-{hashlib.sha256(wanted).hexdigest()[:12]}"


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
    """The entry point of a complete install of exactly this package, or None."""
    venv = venv_path(package, root)
    exe = venv / "bin" / package.entry_point
    if not (exe.exists() and (venv / MARKER).exists()):
        return None
    os.utime(venv)  # last used: what the pruning of stale venvs goes by
    return exe


def _prune_stale(package: ConnectorPackage, root: Path, keep: Path) -> None:
    """Remove this connector's other venvs that no run has used for STALE_AFTER_S. One
    that another process holds (its lock taken) is left alone."""
    now = time.time()
    for other in root.glob(f"{package.name}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            if now - other.stat().st_mtime < STALE_AFTER_S:
                continue
            with open(_lock_path(other), "w") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                shutil.rmtree(other, ignore_errors=True)
                Path(f"{other}.install.log").unlink(missing_ok=True)
        except OSError:
            continue


def _lock_path(venv: Path) -> Path:
    return venv.parent / f".{venv.name}.lock"


def install(
    package: ConnectorPackage,
    root: Path | None = None,
    timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S,
) -> Path:
    """Create ``venv_path(package, root)`` with the package installed; return its entry point.

    Skipped when that venv is already complete. The pip log is kept next to the
    venv (``install.log``) and named in the error when the install fails.
    """
    root = root or cache_root()
    venv = venv_path(package, root)
    with _locked(_lock_path(venv)):
        exe = installed_executable(package, root)
        if exe is not None:
            return exe
        if venv.exists():
            shutil.rmtree(venv)
        log_path = root / f"{venv.name}.install.log"
        started = time.monotonic()
        # pip builds a local project in place (build/, *.egg-info); build from a copy so
        # the source folder, which may be a fixture in the checkout, stays clean.
        local_copies = []
        for src in package.local_paths:
            dst = venv / "src" / src.name
            shutil.copytree(src, dst, ignore=BUILD_LITTER)
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
    _prune_stale(package, root, venv)
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
