"""Shrinking that ends minimal: remove a failing program's steps one at a time.

Hypothesis shrinks a failing fault program (harness.nemesis.generator.program_strategy) as
far as its own passes go, which can leave steps the failure does not need (reads before the
first append, a fault that changes nothing). `minimize` finishes the job the way delta
debugging's last stage does: it tries the program without each step in turn, keeps a
removal when the failure still reproduces, and starts over after any removal, until no
single step can be removed; the program is then 1-minimal (for this failure, under the
oracle's runs). Every candidate is judged by `fails(program)`; in the schedule search that
plays it on a fresh cluster, so tries are expensive and bounded by a `MinimizeBudget` (time
and tries). When the budget ends first the result says it is not proven minimal, and why.

A candidate is kept meaningful with the rules `program_strategy` draws by: one fault at a
time (a start while a fault runs is dropped), no heal or stop of nothing, a final heal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.nemesis.generator import Schedule, Step


@dataclass(frozen=True)
class MinimizeBudget:
    """At most `tries` runs of the oracle and `seconds` of wall time for the whole search."""

    seconds: float
    tries: int


@dataclass(frozen=True)
class Minimized:
    """What `minimize` ended with: the smallest failing program it found and how it got there."""

    schedule: Schedule
    steps_before: int
    tries: int
    seconds: float
    one_minimal: bool
    why: str = ""  # why not proven minimal ("" when it is)

    def to_json(self) -> dict[str, Any]:
        return {
            "one_minimal": self.one_minimal,
            "verdict": "1-minimal" if self.one_minimal else f"not proven minimal: {self.why}",
            "steps_before": self.steps_before,
            "steps": len(self.schedule.steps),
            "tries": self.tries,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        verdict = "1-minimal" if self.one_minimal else f"not proven minimal ({self.why})"
        return (f"{verdict}: {self.steps_before} -> {len(self.schedule.steps)} steps in "
                f"{self.tries} tries, {self.seconds:.0f} s")


def save_minimized(result: Minimized, path: str | Path) -> Path:
    """Write the program as `Schedule.save` does, plus a "minimized" entry saying whether it
    is 1-minimal or why not (`Schedule.load` reads it back, ignoring that entry)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {**result.schedule.to_json(), "minimized": result.to_json()}
    p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return p


def meaningful(steps: tuple[Step, ...] | list[Step]) -> tuple[Step, ...]:
    """The steps kept meaningful by program_strategy's rules (see the module docstring)."""
    kept: list[Step] = []
    active: str | None = None
    for step in steps:
        if step.action == "start":
            if active is not None or step.fault is None:
                continue
            active = step.fault.name
        elif step.action == "stop":
            if step.fault is None or step.fault.name != active:
                continue
            active = None
        elif step.action == "heal":
            if active is None:
                continue
            active = None
        kept.append(step)
    if kept and kept[-1].action == "heal":
        return tuple(kept)
    return (*kept, Step(kept[-1].at_s if kept else None, "heal"))


def without(schedule: Schedule, index: int) -> Schedule:
    """`schedule` without its step `index`, kept meaningful."""
    steps = schedule.steps[:index] + schedule.steps[index + 1:]
    return replace(schedule, steps=meaningful(steps))


def _key(schedule: Schedule) -> tuple[str, ...]:
    return tuple(repr(step.to_json()) for step in schedule.steps)


def minimize(
    schedule: Schedule,
    fails: Callable[[Schedule], bool],
    budget: MinimizeBudget,
    *,
    confirm: bool = True,
    attempts: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> Minimized:
    """The failing `schedule` with every step the failure does not need removed.

    `fails(candidate)` runs the oracle once (True: the failure reproduced). A failure that
    depends on a race may not come back every run: each candidate gets up to `attempts`
    runs, and fails if any of them does (each run is a try of the budget). With `confirm`,
    the given program is run first: a failure that does not reproduce proves nothing about
    the removals, so then the result is the program unchanged, not proven minimal. The last
    step (the final heal) is never removed; a removal that leaves a step meaningless (the
    heal of a fault no longer started) drops that step too.
    """
    began = clock()
    tries = 0
    seen: set[tuple[str, ...]] = set()
    current = replace(schedule, steps=meaningful(schedule.steps))
    before = len(schedule.steps)

    def done(one_minimal: bool, why: str = "") -> Minimized:
        return Minimized(current, before, tries, clock() - began, one_minimal, why)

    def out_of_budget() -> str:
        if tries >= budget.tries:
            return f"the budget of {budget.tries} tries ran out"
        if clock() - began >= budget.seconds:
            return f"the budget of {budget.seconds:.0f} s ran out after {tries} tries"
        return ""

    def reproduces(candidate: Schedule) -> bool | None:
        """Failed in one of its attempts; None if the budget ended before that was known."""
        nonlocal tries
        for attempt in range(max(1, attempts)):
            if attempt and out_of_budget():
                return None
            tries += 1
            if fails(candidate):
                return True
        return False

    if confirm:
        again = reproduces(current)
        if again is None:
            return done(False, f"{out_of_budget()} while re-running the program")
        if not again:
            runs = f"in {tries} runs" if tries > 1 else "when re-run"
            return done(False, f"the program did not fail again {runs}")
    seen.add(_key(current))
    while True:
        removed = False
        index = 0
        while index < len(current.steps) - 1:  # the final heal stays
            candidate = without(current, index)
            key = _key(candidate)
            if key in seen:
                index += 1
                continue
            spent = out_of_budget()
            if spent:
                return done(False, f"{spent}; step {index + 1} of {len(current.steps)} and "
                            "those after it were not all tried without")
            seen.add(key)
            verdict = reproduces(candidate)
            if verdict is None:
                return done(False, f"{out_of_budget()}; step {index + 1} of "
                            f"{len(current.steps)} and those after it were not all tried "
                            "without")
            if verdict:
                current = candidate  # the next step has moved into `index`
                removed = True
            else:
                index += 1
        if not removed:
            return done(True)
