"""Figures of a defect-matrix row run N times (`hstream-conformance defect-matrix --runs N`).

A seeded defect that a check catches only under an unlucky interleaving is caught in some
runs and missed in others; one run says nothing about how often. Over N runs of the same
selection the row shows how many runs caught it and the median runs-to-catch:

    runs-to-catch: over the N runs in their order, the catches at runs p1 < p2 < ... < pk
    (1-based) give the gaps p1 - 0, p2 - p1, ..., pk - p(k-1): how many runs each catch took,
    counting from run 1 for the first. Their median (statistics.median, so possibly a half)
    is the median runs-to-catch; runs after the last catch are not a gap. With no catch in
    the N runs it is "never".

So a defect caught in every run has median 1, caught in runs 2 and 4 of 5 has median 2,
caught only in run 3 of 5 has median 3, and caught in none has "never".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

NEVER = "never"


def catch_gaps(caught: Sequence[bool]) -> list[int]:
    """The runs each catch took (see the module docstring), in order."""
    gaps: list[int] = []
    last = 0
    for position, hit in enumerate(caught, start=1):
        if hit:
            gaps.append(position - last)
            last = position
    return gaps


def median_runs_to_catch(caught: Sequence[bool]) -> float | str:
    """The median of `catch_gaps(caught)`; "never" when no run caught."""
    gaps = catch_gaps(caught)
    if not gaps:
        return NEVER
    middle = statistics.median(gaps)
    return int(middle) if float(middle).is_integer() else float(middle)


def caught_text(caught: Sequence[bool]) -> str:
    """"k of N" runs that caught."""
    return f"{sum(1 for hit in caught if hit)} of {len(caught)}"
