"""Fixtures for the harness's own tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_probes import pids_labelled

from harness.cleanup import REPORTS_ENV
from harness.topology import SESSION_ENV


@pytest.fixture
def isolated_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private reports/ (and session registry) so sweeps of other runs never meet ours."""
    root = tmp_path / "reports"
    monkeypatch.setenv(REPORTS_ENV, str(root))
    monkeypatch.delenv(SESSION_ENV, raising=False)
    yield root


@pytest.fixture
def labelled() -> Callable[[str], list[int]]:
    return pids_labelled
