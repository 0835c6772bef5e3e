"""Connector venvs: created once, reused, rebuilt when the package changes, and failures
that name the pip log."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.io.install import ConnectorPackage, InstallError, install, installed_executable
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
    assert exe == root / "tiny" / "bin" / "tiny-connector"
    spec = Connector("tiny", LocalExecutable(exe), tmp_path / "runs").spec()
    # The entry point runs inside its own venv, not the harness's interpreter.
    assert spec["documentationUrl"] == str(root / "tiny")
    assert not (tiny_copy / "build").exists(), "the source folder must stay clean"

    marker = root / "tiny" / "installed.json"
    stamp = marker.stat().st_mtime_ns
    t0 = time.monotonic()
    assert install(pkg, root) == exe
    assert time.monotonic() - t0 < 1 and marker.stat().st_mtime_ns == stamp, "not reused"

    source = tiny_copy / "tiny_connector.py"
    source.write_text(source.read_text().replace('GREETING = "tiny"', 'GREETING = "edited!"'))
    install(pkg, root)
    assert marker.stat().st_mtime_ns != stamp, "an edited package must be reinstalled"
    spec = Connector("tiny", LocalExecutable(exe), tmp_path / "runs2").spec()
    assert spec["connectionSpecification"]["title"] == "edited!"


def test_broken_package_names_the_pip_log(tmp_path: Path, tiny_copy: Path):
    (tiny_copy / "pyproject.toml").write_text("this is [not toml")
    pkg = ConnectorPackage("broken", (), "tiny-connector", (tiny_copy,))
    with pytest.raises(InstallError) as err:
        install(pkg, tmp_path / "cache")
    message = str(err.value)
    assert "installing connector 'broken' failed (exit" in message
    log = tmp_path / "cache" / "broken.install.log"
    assert str(log) in message and log.exists()
    # pip was tried twice (a failed download may pass the second time), both in the log.
    assert log.read_text().count("pip install") == 2
    assert "trying once more" in log.read_text()
    assert installed_executable(pkg, tmp_path / "cache") is None, "no marker after a failure"


def test_missing_entry_point_is_named(tmp_path: Path, tiny_copy: Path):
    pkg = ConnectorPackage("misnamed", (), "source-does-not-exist", (tiny_copy,))
    with pytest.raises(InstallError, match="has no entry point 'source-does-not-exist'"):
        install(pkg, tmp_path / "cache")
