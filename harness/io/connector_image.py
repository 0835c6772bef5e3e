"""What the connectors image (docker/connectors) is built from: every fixture connector with a
``[package]``, as wheels the host builds, and the catalogue that names their programs.

Real HStreamDB runs a connector as an image of its own; a reference node in a container runs
it as a program in its own container instead, so the node image the IO suite uses
(``refserver-io``) is the reference server's recipe built on this image. Each connector gets
a venv of its own there, as on the host (their airbyte-cdk stacks clash with the harness's):
``/opt/hstream-io/<name>``, installed offline from wheels the host builds with pip
(``docker/.build/connector-wheels/<name>-<digest>``, the digest of the host venv's inputs:
rebuilt only when a requirement or a local package changes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.images import BUILD_DIR, ImageBuildError, Progress
from harness.io.catalogue import catalogue, entry, run_log_name
from harness.io.connectors import ConnectorDefinition, load_connectors
from harness.io.install import BUILD_LITTER, ConnectorPackage, venv_path

IMAGE_ROOT = "/opt/hstream-io"
CATALOGUE_PATH = f"{IMAGE_ROOT}/connectors.json"
# Written by the launcher in every node container: the run logs, and where the suite's sinks
# write their output (both read back from the containers by the suite).
RUN_LOG_DIR = "/var/lib/hstream-io/runs"
OUTPUT_DIR = "/var/lib/hstream-io/output"
WHEELS_ROOT = BUILD_DIR / "connector-wheels"
COMPLETE = ".complete"
PIP_WHEEL_TIMEOUT_S = 900.0


def packaged() -> list[ConnectorDefinition]:
    """The connectors the image holds: every definition with a package to install."""
    return [d for d in load_connectors() if d.package is not None]


def image_catalogue() -> dict[str, object]:
    return catalogue(
        (defn, entry(f"{IMAGE_ROOT}/{defn.name}/bin/{defn.package.entry_point}",  # type: ignore[union-attr]
                     f"{RUN_LOG_DIR}/{run_log_name(defn)}"))
        for defn in packaged())


def connector_wheels(package: ConnectorPackage, progress: Progress) -> list[Path]:
    """The wheels of `package` and everything it needs, built on the host once per digest."""
    folder = venv_path(package, WHEELS_ROOT)
    if (folder / COMPLETE).exists():
        return sorted(folder.glob("*.whl"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    progress(f"connector wheels: pip wheel {package.name} -> {folder.name}")
    with tempfile.TemporaryDirectory(prefix="hsc-connector-src-") as scratch:
        # pip may build a local project in place: build from a copy, the fixture stays clean.
        local = [shutil.copytree(src, Path(scratch) / src.name, ignore=BUILD_LITTER)
                 for src in package.local_paths]
        argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                *package.requirements, *map(str, local), "-w", str(folder)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=PIP_WHEEL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ImageBuildError(f"pip wheel for connector {package.name} took longer than "
                                  f"{PIP_WHEEL_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        raise ImageBuildError(
            f"pip wheel for connector {package.name} failed (check the package index is "
            f"reachable):\n{done.stderr[-3000:]}")
    (folder / COMPLETE).write_text("")
    return sorted(folder.glob("*.whl"))


def context_files(progress: Progress) -> dict[str, Path]:
    """Build-context name -> file on the host: ``connectors/<name>/*.whl`` for each
    connector, and ``connectors.json``."""
    files: dict[str, Path] = {}
    for defn in packaged():
        assert defn.package is not None
        for wheel in connector_wheels(defn.package, progress):
            files[f"connectors/{defn.name}/{wheel.name}"] = wheel
    WHEELS_ROOT.mkdir(parents=True, exist_ok=True)
    doc = WHEELS_ROOT / "connectors.json"
    doc.write_text(json.dumps(image_catalogue(), indent=2, sort_keys=True) + "\n")
    files["connectors.json"] = doc
    return files
