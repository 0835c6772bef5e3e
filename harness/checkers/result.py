"""The verdict every checker returns, and how verdicts compose (Jepsen's merge-valid)."""

from __future__ import annotations

import functools
import gc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np

# "vacuous": the faults never reached what the test is about (harness.checkers.reach).
Validity = bool | Literal["unknown", "vacuous"]
P = ParamSpec("P")
R = TypeVar("R")

# Enough examples of one anomaly kind to debug it; the exact total is always in `counts`.
MAX_EXAMPLES = 1000


@dataclass
class Result:
    """valid: True, False or "unknown" (not enough evidence, e.g. no final read).

    counts: exact numbers per category; anomalies: kind -> examples (at most MAX_EXAMPLES,
    the full number is counts[kind]); figures: measurements (latency quantiles, times).
    """

    valid: Validity
    counts: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, list[Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checker: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": self.checker,
            "valid": self.valid,
            "counts": self.counts,
            "anomalies": self.anomalies,
            "figures": self.figures,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line: the verdict and every non-zero anomaly count."""
        bad = {k: self.counts.get(k, len(v)) for k, v in self.anomalies.items() if v}
        parts = ", ".join(f"{k}={n}" for k, n in sorted(bad.items())) or "no anomalies"
        return f"{self.checker}: valid={self.valid} ({parts})"


def merge_valid(values: Iterable[Validity]) -> Validity:
    """False beats "unknown" beats "vacuous" beats True; nothing to judge is True."""
    out: Validity = True
    for v in values:
        if v is False:
            return False
        if v == "unknown":
            out = "unknown"
        elif v == "vacuous" and out is True:
            out = "vacuous"
    return out


def add_anomaly(result: Result, kind: str, example: Any) -> None:
    """Count one anomaly of `kind` and keep it as an example while there is room."""
    result.counts[kind] = result.counts.get(kind, 0) + 1
    examples = result.anomalies.setdefault(kind, [])
    if len(examples) < MAX_EXAMPLES:
        examples.append(example)


def add_anomalies(
    result: Result, kind: str, items: Sequence[Any], describe: Callable[[Any], Any]
) -> None:
    """`add_anomaly` for each of `items` in order, describing only the examples kept (a
    history with a million duplicates should not build a million example dicts)."""
    if not items:
        return
    result.counts[kind] = result.counts.get(kind, 0) + len(items)
    examples = result.anomalies.setdefault(kind, [])
    room = MAX_EXAMPLES - len(examples)
    if room > 0:
        examples.extend(map(describe, items[:room]))


def quantiles(
    values: Sequence[float], qs: Sequence[float] = (0.5, 0.9, 0.99, 1.0)
) -> dict[str, Any]:
    """Nearest-rank quantiles (q=1.0 is the max) and the count; empty input gives count 0."""
    if not values:
        return {"count": 0}
    n = len(values)
    ranks = [max(1, math.ceil(q * n)) - 1 for q in qs]
    xs: list[Any] | None = None
    if n > _PARTITION_FROM and set(map(type, values)) == {float}:
        # a million latencies: the few ranks found by numpy's partition, not a full sort
        # of Python floats (float64 holds every Python float exactly; NaN sorts apart)
        array = np.array(values, dtype=np.float64)
        if not np.isnan(array).any():
            xs = np.partition(array, ranks).tolist()
    if xs is None:
        xs = sorted(values)
    out: dict[str, Any] = {"count": n}
    for q, rank in zip(qs, ranks, strict=True):
        key = "max" if q >= 1.0 else f"p{round(q * 100, 3):g}"
        out[key] = round(xs[rank], 3)
    return out


_PARTITION_FROM = 1000


NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a checker's pass.

    A pass over a million ops allocates millions of small dicts, sets and tuples, none of
    them in reference cycles; the collector would rescan them over and over (measured:
    a subscription check ran twice as fast without it).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a checker so its whole pass runs with the collector paused (see gc_paused)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return fn(*args, **kwargs)

    return run
