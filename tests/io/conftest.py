"""Fixtures for the IO runner tests: the fake connector as a real executable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.io.runner import Connector, LocalExecutable

FAKE = Path(__file__).with_name("fake_connector.py")


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., Connector]:
    """``fake(mode, **timeouts)``: a Connector running fake_connector.py in that mode."""

    def make(mode: str = "good", **timeouts_s: float) -> Connector:
        return Connector(
            f"fake-{mode}",
            LocalExecutable(FAKE),
            tmp_path / mode,
            timeouts_s=timeouts_s or None,
            env={"FAKE_CONNECTOR_MODE": mode,
                 "FAKE_CONNECTOR_PIDFILE": str(tmp_path / f"{mode}.pid")},
        )

    return make
