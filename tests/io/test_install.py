"""Connector venvs: created once, reused, rebuilt when the package changes, and failures
that name the pip log."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from harness.io.install import (
    STALE_AFTER_S,
    ConnectorPackage,
    InstallError,
    install,
    installed_executable,
    venv_path,
)
from harness.io.runner import Connector, LocalExecutable

TINY = Path(__file__).with_name("tiny_connector")
pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "src" / "tiny_connector"
    shutil.copytree(TINY, dst)
    return dst


def test_install_runs_reuses_and_rebuilds(tmp_path: Path, tiny_copy: Path):
    root = tmp_path / "cache"
    pkg = ConnectorPackage("tiny", (), "tiny-connector", (tiny_copy,))
    assert installed_executable(pkg, root) is None
    exe = install(pkg, root)
    venv = venv_path(pkg, root)
    assert venv.name.startswith("tiny-") and exe == venv / "bin" / "tiny-connector"
    spec = Connector("tiny", LocalExecutable(exe), tmp_path / "runs").spec()
    # The entry point runs inside its own venv, not the harness's interpreter.
    assert spec["documentationUrl"] == str(venv)
    assert not (tiny_copy / "build").exists(), "the source folder must stay clean"

    marker = venv / "installed.json"
    stamp = marker.stat().st_mtime_ns
    t0 = time.monotonic()
    assert install(pkg, root) == exe
    assert time.monotonic() - t0 < 1 and marker.stat().st_mtime_ns == stamp, "not reused"

    source = tiny_copy / "tiny_connector.py"
    source.write_text(source.read_text().replace('GREETING = "tiny"', 'GREETING = "edited!"'))
    edited = install(pkg, root)
    assert edited != exe, "an edited package must be installed into a venv of its own"
    spec = Connector("tiny", LocalExecutable(edited), tmp_path / "runs2").spec()
    assert spec["connectionSpecification"]["title"] == "edited!"
    # The first venv stays for the checkout that still has the old sources...
    assert marker.stat().st_mtime_ns == stamp and exe.exists()


def test_checkouts_with_the_same_sources_share_one_venv(tmp_path: Path):
    """Two clones hold the fixture at different paths, with different mtimes: one venv."""
    root = tmp_path / "cache"
    first = tmp_path / "clone-a" / "tiny_connector"
    second = tmp_path / "clone-b" / "tiny_connector"
    shutil.copytree(TINY, first)
    time.sleep(1.1)  # a later clone: every file's mtime differs by at least a second
    shutil.copytree(TINY, second)
    exe = install(ConnectorPackage("tiny", (), "tiny-connector", (first,)), root)
    t0 = time.monotonic()
    again = install(ConnectorPackage("tiny", (), "tiny-connector", (second,)), root)
    assert again == exe and time.monotonic() - t0 < 1, "the second clone rebuilt the venv"
    assert [p.name for p in root.iterdir() if p.is_dir()] == [exe.parent.parent.name]


def test_a_venv_unused_for_long_is_removed_when_another_is_installed(tmp_path: Path,
                                                                      tiny_copy: Path):
    root = tmp_path / "cache"
    old = install(ConnectorPackage("tiny", (), "tiny-connector", (tiny_copy,)), root)
    old_venv = old.parent.parent
    long_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old_venv, (long_ago, long_ago))
    source = tiny_copy / "tiny_connector.py"
    source.write_text(source.read_text().replace('GREETING = "tiny"', 'GREETING = "new"'))
    new = install(ConnectorPackage("tiny", (), "tiny-connector", (tiny_copy,)), root)
    assert new.exists() and not old_venv.exists(), "the stale venv was kept"


def test_broken_package_names_the_pip_log(tmp_path: Path, tiny_copy: Path):
    (tiny_copy / "pyproject.toml").write_text("this is [not toml")
    pkg = ConnectorPackage("broken", (), "tiny-connector", (tiny_copy,))
    with pytest.raises(InstallError) as err:
        install(pkg, tmp_path / "cache")
    message = str(err.value)
    assert "installing connector 'broken' failed (exit" in message
    log = tmp_path / "cache" / f"{venv_path(pkg, tmp_path / 'cache').name}.install.log"
    assert str(log) in message and log.exists()
    # pip was tried twice (a failed download may pass the second time), both in the log.
    assert log.read_text().count("pip install") == 2
    assert "trying once more" in log.read_text()
    assert installed_executable(pkg, tmp_path / "cache") is None, "no marker after a failure"


def test_missing_entry_point_is_named(tmp_path: Path, tiny_copy: Path):
    pkg = ConnectorPackage("misnamed", (), "source-does-not-exist", (tiny_copy,))
    with pytest.raises(InstallError, match="has no entry point 'source-does-not-exist'"):
        install(pkg, tmp_path / "cache")
