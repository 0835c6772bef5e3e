"""Finding the host's Debian mirror for the base image, in both apt source formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import images


@pytest.fixture
def without_apt_get(monkeypatch: pytest.MonkeyPatch) -> None:
    # Exercise the sources-file reader, which is what runs where apt-get is absent.
    monkeypatch.setattr(images.shutil, "which", lambda name: None)


def test_deb822_skips_security_and_other_suites(tmp_path: Path, without_apt_get: None) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert images.host_apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_one_line_format_with_options(tmp_path: Path, without_apt_get: None) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bullseye main\n"
        "deb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
    )
    assert images.host_apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_no_bookworm_source_says_how_to_fix(tmp_path: Path, without_apt_get: None) -> None:
    (tmp_path / "sources.list").write_text("deb http://other.example/debian bullseye main\n")
    with pytest.raises(images.ImageBuildError, match="pass --mirror"):
        images.host_apt_mirror(tmp_path)
