"""The defect matrix covers every seeded defect, each with checks that exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.matrix.defects import (
    CONTROLS,
    TARGETS,
    Outcome,
    control_verdict,
    healthy_and_all_caught,
    table,
)
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


NO_CONTROL_YET = pytest.param("", marks=pytest.mark.skip(reason="no defect has a control yet"))


@pytest.mark.parametrize("defect", sorted(CONTROLS) or [NO_CONTROL_YET])
def test_the_matrix_selects_control_tests_for_each_defect(defect: str) -> None:
    paths, expression = CONTROLS[defect]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *paths, "-k", expression],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    selected = [line for line in collected.stdout.splitlines() if "::" in line]
    assert selected, f"control -k {expression!r} selects nothing in {paths}:\n{collected.stdout}"


def _outcome(defect: str, failed: list[str], control_failed: list[str] | None) -> Outcome:
    outcome = Outcome(defect, selected=2, failed=failed, exit_code=1 if failed else 0)
    if control_failed is not None:
        outcome.control = Outcome(defect, selected=3, failed=control_failed,
                                  exit_code=1 if control_failed else 0)
    return outcome


def test_a_defect_the_old_faults_also_catch_fails_the_matrix() -> None:
    healthy = Outcome("healthy", selected=5)
    caught_missed = _outcome("fsync-lie", ["t::new_fault"], [])
    assert control_verdict(caught_missed) == "missed"
    assert healthy_and_all_caught([caught_missed, healthy])
    caught_by_old = _outcome("fsync-lie", ["t::new_fault"], ["t::kill"])
    assert control_verdict(caught_by_old) == "caught too"
    assert not healthy_and_all_caught([caught_by_old, healthy])
    assert "caught too" in table([caught_by_old, healthy])
    no_control = _outcome("stale-owner", ["t::x"], None)
    assert control_verdict(no_control) == "-"
    assert healthy_and_all_caught([no_control, healthy])
    assert not healthy_and_all_caught([_outcome("stale-owner", [], None), healthy])
