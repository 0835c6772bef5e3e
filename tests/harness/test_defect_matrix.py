"""The defect matrix covers every seeded defect, each with checks that exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.matrix.defects import TARGETS
from refserver.defects import DEFECTS

REPO = Path(__file__).resolve().parents[2]


def test_every_seeded_defect_is_in_the_matrix() -> None:
    assert set(TARGETS) == set(DEFECTS)


@pytest.mark.parametrize("defect", sorted(TARGETS))
def test_the_matrix_selects_tests_for_each_defect(defect: str) -> None:
    paths, expression = TARGETS[defect]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *paths, "-k", expression],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    selected = [line for line in collected.stdout.splitlines() if "::" in line]
    assert selected, f"-k {expression!r} selects nothing in {paths}:\n{collected.stdout}"
