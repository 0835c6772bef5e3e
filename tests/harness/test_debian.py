"""Debian tools: present ones pass, missing ones are installed as root or refused with the
command that installs them."""

from __future__ import annotations

import pytest

from harness import debian


def test_present_tools_need_nothing() -> None:
    assert debian.missing_tools({"sh": "dash", "/bin/sh": "dash"}) == {}
    debian.ensure_tools({"sh": "dash"}, why="a test")  # no apt-get, no error


def test_not_root_is_told_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    tools = {"no-such-tool-xyz": "no-such-package-xyz", "/no/such/lib.so": "libno-such"}
    with pytest.raises(debian.ToolMissing) as err:
        debian.ensure_tools(tools, why="the clock fault")
    message = str(err.value)
    assert "the clock fault needs" in message
    assert "apt-get install libno-such no-such-package-xyz" in message


def test_a_package_apt_cannot_find_fails_with_apt_s_words(monkeypatch: pytest.MonkeyPatch) -> None:
    if debian.os.geteuid() != 0 or debian.shutil.which("apt-get") is None:
        pytest.skip("needs root and apt-get (the install path)")
    # apt-get update is skipped: the first install's failure is enough for the message.
    real_run = debian.subprocess.run

    def run(argv, **kw):  # type: ignore[no-untyped-def]
        if argv[:2] == ["apt-get", "update"]:
            return real_run(["true"], **kw)
        return real_run(argv, **kw)

    monkeypatch.setattr(debian.subprocess, "run", run)
    with pytest.raises(debian.ToolMissing, match="apt-get failed"):
        debian.ensure_tools({"no-such-tool-xyz": "no-such-package-xyz"}, why="a test")
