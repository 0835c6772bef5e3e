"""Shrinking that ends minimal, judged by deterministic oracles (predicates over programs)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from harness.nemesis import FAULTS, Schedule, Step
from harness.nemesis.minimize import (
    MinimizeBudget,
    meaningful,
    minimize,
    save_minimized,
    without,
)

NODES = (1, 2, 3)
ROOMY = MinimizeBudget(seconds=60, tries=1000)


def start(fault: str) -> Step:
    return Step(None, "start", FAULTS[fault].resolve(list(NODES), random.Random(3)))


def append(key: str, records: int = 1) -> Step:
    return Step(None, "append", args={"key": key, "records": records})


READ, HEAL = Step(None, "read"), Step(None, "heal")


def program(*steps: Step) -> Schedule:
    return Schedule(seed=0, nodes=NODES, steps=tuple(steps))


def describe(schedule: Schedule) -> list[str]:
    return [s.action + (f" {s.fault.name}" if s.fault else "")
            + (f" {s.args['key']}" if "key" in s.args else "") for s in schedule.steps]


def counted(predicate: Callable[[Schedule], bool]) -> tuple[Callable[[Schedule], bool], list[int]]:
    calls = [0]

    def oracle(schedule: Schedule) -> bool:
        calls[0] += 1
        return predicate(schedule)

    return oracle, calls


def append_a_then_store_killed(schedule: Schedule) -> bool:
    """Fails when an append of key a comes before a kill of the store and a read after it."""
    names = describe(schedule)
    try:
        first = names.index("append a")
        kill = names.index("start kill-store", first)
    except ValueError:
        return False
    return "read" in names[kill:]


# What the search kept before: four leading reads and steps the failure does not need.
PADDED = program(READ, READ, READ, READ, append("b"), append("a"), READ, start("kill-one"),
                 HEAL, start("kill-store"), READ, HEAL)


def assert_one_minimal(schedule: Schedule, predicate: Callable[[Schedule], bool]) -> None:
    assert predicate(schedule)
    for index in range(len(schedule.steps) - 1):
        assert not predicate(without(schedule, index)), f"step {index} is not needed"


def test_minimizer_ends_one_minimal_and_counts_its_tries() -> None:
    oracle, calls = counted(append_a_then_store_killed)
    result = minimize(PADDED, oracle, ROOMY)
    assert describe(result.schedule) == ["append a", "start kill-store", "read", "heal"]
    assert result.one_minimal and result.why == ""
    assert_one_minimal(result.schedule, append_a_then_store_killed)
    assert result.tries == calls[0]
    # 1 confirming run; pass 1: four reads and append b go (5 tries), append a stays (1), the
    # read and the kill-one with its heal go (2), the kill-store and the last read stay (2);
    # pass 2 (after removals, one may free another): only the candidate without append a is
    # new (1), the other two were tried on this very program in pass 1.
    assert result.tries == 1 + 5 + 1 + 2 + 2 + 1, result.tries
    assert result.steps_before == 12
    assert result.to_json()["verdict"] == "1-minimal"
    assert "12 -> 4 steps in 12 tries" in result.summary()


def test_a_step_freed_by_a_later_removal_goes_in_the_next_pass() -> None:
    # The read is needed while append b is there: only once b is gone (after the read was
    # tried) can the read go, which takes a second pass.
    def needs_read_while_b(schedule: Schedule) -> bool:
        names = describe(schedule)
        return "append a" in names and ("append b" not in names or "read" in names)

    oracle, calls = counted(needs_read_while_b)
    result = minimize(program(READ, append("b"), append("a"), HEAL), oracle, ROOMY)
    assert describe(result.schedule) == ["append a", "heal"]
    assert result.one_minimal
    assert_one_minimal(result.schedule, needs_read_while_b)
    # confirm; pass 1: the read stays, b goes, a stays; pass 2: the read goes, a stays;
    # pass 3 has nothing new to try
    assert result.tries == calls[0] == 1 + 3 + 2


def test_one_minimal_is_not_always_the_smallest() -> None:
    # An odd number of reads fails: no single read can go from three, though one would do.
    def odd_reads(schedule: Schedule) -> bool:
        names = describe(schedule)
        return "append a" in names and names.count("read") % 2 == 1

    result = minimize(program(append("a"), READ, READ, READ, HEAL), odd_reads, ROOMY)
    assert result.one_minimal and describe(result.schedule).count("read") == 3


def test_the_tries_budget_ends_it_unproven() -> None:
    oracle, calls = counted(append_a_then_store_killed)
    result = minimize(PADDED, oracle, MinimizeBudget(seconds=60, tries=4))
    assert not result.one_minimal and calls[0] == 4 == result.tries
    assert "the budget of 4 tries ran out" in result.why
    assert result.to_json()["verdict"].startswith("not proven minimal: the budget of 4 tries")
    assert append_a_then_store_killed(result.schedule)  # still a failing program, smaller
    assert len(result.schedule.steps) < len(PADDED.steps)


def test_the_time_budget_ends_it_unproven() -> None:
    now = [0.0]

    def slow(schedule: Schedule) -> bool:
        now[0] += 10.0  # each run of the oracle takes 10 s on this clock
        return append_a_then_store_killed(schedule)

    result = minimize(PADDED, slow, MinimizeBudget(seconds=35, tries=1000), clock=lambda: now[0])
    assert not result.one_minimal and result.tries == 4
    assert "the budget of 35 s ran out after 4 tries" in result.why


def test_a_failure_that_does_not_reproduce_is_not_minimized() -> None:
    oracle, calls = counted(lambda schedule: False)
    result = minimize(PADDED, oracle, ROOMY)
    assert calls[0] == 1 and result.schedule == PADDED
    assert not result.one_minimal and "did not fail again" in result.why


@pytest.mark.parametrize(
    ("steps", "kept"),
    [
        # the heal of a fault no longer started goes with it
        ((append("a"), HEAL, READ, HEAL), ["append a", "read", "heal"]),
        # one fault at a time: a start while one runs is dropped, a final heal always added
        ((start("kill-one"), start("kill-store"), READ), ["start kill-one", "read", "heal"]),
        ((), ["heal"]),
    ],
)
def test_candidates_stay_meaningful(steps: tuple[Step, ...], kept: list[str]) -> None:
    assert describe(program(*meaningful(steps))) == kept
    program(*meaningful(steps)).validate()


def test_the_saved_file_says_how_far_it_got_and_loads_as_a_schedule(tmp_path) -> None:
    proven = minimize(PADDED, append_a_then_store_killed, ROOMY)
    path = save_minimized(proven, tmp_path / "s.json")
    assert Schedule.load(path) == proven.schedule
    assert json.loads(path.read_text())["minimized"]["verdict"] == "1-minimal"
    cut = minimize(PADDED, append_a_then_store_killed, MinimizeBudget(seconds=60, tries=2))
    saved = json.loads(save_minimized(cut, tmp_path / "t.json").read_text())["minimized"]
    assert saved["one_minimal"] is False
    assert saved["verdict"].startswith("not proven minimal: the budget of 2 tries ran out")


def test_a_race_gets_several_attempts_per_candidate() -> None:
    # The failure comes back on every third run only; three attempts find it each time.
    runs = [0]

    def every_third_run(schedule: Schedule) -> bool:
        runs[0] += 1
        return runs[0] % 3 == 0 and append_a_then_store_killed(schedule)

    result = minimize(PADDED, every_third_run, ROOMY, attempts=3)
    assert result.one_minimal, result.why
    assert describe(result.schedule) == ["append a", "start kill-store", "read", "heal"]
    assert result.tries == runs[0]
    once = minimize(PADDED, every_third_run, ROOMY)
    assert not once.one_minimal and once.why == "the program did not fail again when re-run"
    thrice = minimize(PADDED, lambda schedule: False, ROOMY, attempts=3)
    assert thrice.tries == 3 and "did not fail again in 3 runs" in thrice.why


def test_the_budget_ending_between_attempts_leaves_it_unproven() -> None:
    result = minimize(PADDED, lambda schedule: False, MinimizeBudget(seconds=60, tries=2),
                      attempts=3)
    assert result.tries == 2 and not result.one_minimal
    assert result.why == "the budget of 2 tries ran out while re-running the program"
