"""Schedules: the one data type for what happens when (Jepsen's generator, as a value).

A `Schedule` is a finite sequence of `Step`s, iterated in order. A step starts or stops a
`FaultInstance`, heals everything, waits, or is a client op (`append`, `read`) for a
workload to carry out; `at_s` is when it happens (seconds after the schedule starts) or
None for "right after the previous step". Three producers make them:

* `generate_schedule(seed, ...)`: timed heal and fault periods drawn from a seed (chaos runs);
* `schedule_strategy(...)`: the same shape drawn by Hypothesis, which shrinks it;
* `program_strategy(...)`: untimed client steps and faults, what the fault search explores.

`play(schedule, nemesis, client=...)` consumes any of them; a failing one is saved as JSON
and replayed exactly (`hstream-conformance replay <file>`). `Schedule.from_json` also reads
the two shapes saved before schedules and step programs were one type.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.nemesis.base import NemesisError
from harness.nemesis.faults import FAULTS, Fault, FaultInstance, parse_faults

if TYPE_CHECKING:
    from harness.nemesis.recording import Nemesis

NEMESIS_ACTIONS = ("start", "stop", "heal")
CLIENT_ACTIONS = ("append", "read")
ACTIONS = (*NEMESIS_ACTIONS, *CLIENT_ACTIONS, "wait")


@dataclass(frozen=True)
class Step:
    """At `at_s` (None: right after the previous step), do `action`.

    start/stop take `fault`; append takes args key and records; wait takes args seconds.
    """

    at_s: float | None
    action: str
    fault: FaultInstance | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action}
        if self.at_s is not None:
            d = {"at_s": self.at_s, **d}
        if self.fault is not None:
            d["fault"] = self.fault.to_json()
        if self.args:
            d["args"] = dict(self.args)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Step:
        f = d.get("fault")
        at = d.get("at_s")
        return cls(
            at_s=None if at is None else float(at),
            action=d["action"],
            fault=None if f is None else FaultInstance.from_json(f),
            args=dict(d.get("args") or {}),
        )

    def describe(self) -> str:
        when = "   (next)" if self.at_s is None else f"{self.at_s:8.2f}s"
        what = "" if self.fault is None else f" {self.fault.name} nodes={list(self.fault.nodes)}"
        down = f" down={list(self.fault.down)}" if self.fault and self.fault.down else ""
        args = "".join(f" {k}={v}" for k, v in self.args.items())
        return f"  {when} {self.action}{what}{down}{args}"


@dataclass(frozen=True)
class Schedule:
    """Steps for a cluster of `nodes`; `cluster` holds what a replay needs to start a fresh
    one like it (node count, defects, gossip timings, seed), empty when it does not matter."""

    seed: int
    nodes: tuple[int, ...]
    steps: tuple[Step, ...]
    cluster: Mapping[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    @property
    def duration_s(self) -> float:
        return max((s.at_s for s in self.steps if s.at_s is not None), default=0.0)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seed": self.seed,
            "nodes": list(self.nodes),
            "steps": [s.to_json() for s in self.steps],
        }
        if self.cluster:
            d["cluster"] = dict(self.cluster)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Schedule:
        try:
            if _is_step_program(d):
                schedule = _from_step_program(d)
            else:
                schedule = cls(
                    seed=int(d["seed"]),
                    nodes=tuple(int(n) for n in d["nodes"]),
                    steps=tuple(Step.from_json(s) for s in d["steps"]),
                    cluster=dict(d.get("cluster") or {}),
                )
        except (KeyError, TypeError, ValueError, AttributeError, NemesisError) as exc:
            why = exc if isinstance(exc, NemesisError) else f"{type(exc).__name__}: {exc}"
            raise NemesisError(
                f"not a fault schedule ({why}); expected seed, nodes and steps as written by "
                "Schedule.to_json"
            ) from None
        schedule.validate()
        return schedule

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.dumps() + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NemesisError(f"cannot read fault schedule {path}: {exc}") from None
        try:
            return cls.from_json(data)
        except NemesisError as exc:
            raise NemesisError(f"{path}: {exc}") from None

    def validate(self) -> None:
        """Known actions, timed steps in time order, every stop of a running fault, and a
        final heal."""
        active: list[str] = []
        last = 0.0
        for step in self.steps:
            if step.action not in ACTIONS:
                raise NemesisError(
                    f"unknown schedule action {step.action!r}; known: {', '.join(ACTIONS)}"
                )
            if step.at_s is not None:
                if step.at_s < last:
                    raise NemesisError(f"schedule steps go back in time at {step.at_s} s")
                last = step.at_s
            if step.action == "start":
                if step.fault is None:
                    raise NemesisError(f"schedule starts no fault at {last} s")
                active.append(step.fault.name)
            elif step.action == "stop":
                if step.fault is None or step.fault.name not in active:
                    raise NemesisError(f"schedule stops a fault that is not running at {last} s")
                active.remove(step.fault.name)
            elif step.action == "heal":
                active.clear()
        if not self.steps or self.steps[-1].action != "heal":
            raise NemesisError("a schedule must end with a heal step")

    def bind(self, **names: str) -> Schedule:
        """The schedule with each ``{name}`` in its faults' roles replaced (a role drawn before
        the workload named its resources: ``shard-owner:{stream}/key=a``)."""

        def bound(step: Step) -> Step:
            if step.fault is None or step.fault.fault.role is None:
                return step
            role = step.fault.fault.role
            for name, value in names.items():
                role = role.replace("{" + name + "}", value)
            return replace(step, fault=replace(step.fault, fault=replace(step.fault.fault,
                                                                         role=role)))

        return replace(self, steps=tuple(bound(s) for s in self.steps))

    def describe(self) -> str:
        """One line per step, for failure messages (replay with the seed or the JSON)."""
        lines = [f"fault schedule seed={self.seed} nodes={list(self.nodes)}"]
        return "\n".join(lines + [s.describe() for s in self.steps])


def always_heal_last(schedule: Schedule) -> Schedule:
    """The schedule with a final heal step added if it lacks one."""
    if schedule.steps and schedule.steps[-1].action == "heal":
        return schedule
    end = schedule.steps[-1].at_s if schedule.steps else 0.0
    return replace(schedule, steps=(*schedule.steps, Step(end, "heal")))


# -- the shape saved before schedules and step programs were one type --------------------------

_PROGRAM_OPS = ("append", "read", "fault", "heal", "wait")


def _is_step_program(d: Mapping[str, Any]) -> bool:
    steps = d.get("steps")
    return "seed" not in d and isinstance(steps, list) and any("op" in s for s in steps)


def _from_step_program(d: Mapping[str, Any]) -> Schedule:
    """A step program `{"cluster": {...}, "steps": [{"op": ...}]}`, resolved exactly as its
    runner did: victims drawn from Random(cluster seed) over node ids 1..nodes, a fault's
    first step choosing them until the next heal."""
    cluster = dict(d.get("cluster") or {})
    seed = int(cluster.get("seed", 0))
    nodes = tuple(range(1, int(cluster.get("nodes", 3)) + 1))
    rng = random.Random(seed)
    chosen: dict[str, FaultInstance] = {}
    steps: list[Step] = []
    for i, raw in enumerate(d["steps"]):
        op = raw.get("op") if isinstance(raw, dict) else None
        if op not in _PROGRAM_OPS:
            raise NemesisError(f"step {i} {raw!r} is not one of {', '.join(_PROGRAM_OPS)}")
        if op == "fault":
            name = raw["fault"]
            if name not in FAULTS:
                raise NemesisError(f"step {i}: unknown fault {name!r}")
            if name not in chosen:
                chosen[name] = FAULTS[name].resolve(nodes, rng)
            steps.append(Step(None, raw.get("action", "start"), chosen[name]))
        elif op == "heal":
            chosen.clear()
            steps.append(Step(None, "heal"))
        else:
            args = {k: v for k, v in raw.items() if k != "op"}
            steps.append(Step(None, op, args=args))
    # its runner always healed before the final read
    return always_heal_last(Schedule(seed=seed, nodes=nodes, steps=tuple(steps), cluster=cluster))


# -- producers ---------------------------------------------------------------------------------


def fault_pool(faults: Sequence[Fault | str] | str) -> list[Fault]:
    """Faults given as Faults, fault or package names, or one comma-separated string."""
    if isinstance(faults, str):
        return parse_faults(faults)
    pool: list[Fault] = []
    for item in faults:
        for fault in [item] if isinstance(item, Fault) else parse_faults(item):
            if fault not in pool:
                pool.append(fault)
    return pool


def aimed(fault: Fault, role: str | None, nodes: Sequence[int], rng: random.Random
          ) -> FaultInstance:
    """`fault` aimed at `role` (resolved when it starts), or drawn with `rng` as before when
    there is no role or the fault's kind cannot be aimed at it."""
    if role is not None:
        try:
            return fault.aim(role)
        except NemesisError:
            pass
    return fault.resolve(nodes, rng)


def generate_schedule(
    seed: int,
    nodes: Sequence[int],
    faults: Sequence[Fault | str] | str,
    *,
    duration_s: float,
    fault_s: tuple[float, float] = (5.0, 10.0),
    heal_s: tuple[float, float] = (5.0, 10.0),
    roles: Sequence[str] = (),
) -> Schedule:
    """Heal period, fault period, repeated until `duration_s`, then a final heal.

    Each cycle waits a heal period drawn from `heal_s`, starts one fault drawn from
    `faults` (resolved against `nodes`), keeps it for a period drawn from `fault_s` and stops
    it. Every draw comes from `random.Random(seed)`, so a seed names a schedule. With
    `roles` (harness.nemesis.roles; e.g. `Resources.roles()` of what the workload created)
    each fault is also drawn aimed at one of them or, as before, at nodes drawn by number.
    """
    if duration_s <= 0:
        raise NemesisError("duration_s must be positive")
    for name, (lo, hi) in (("fault_s", fault_s), ("heal_s", heal_s)):
        if not 0 < lo <= hi:
            raise NemesisError(f"{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
    pool = fault_pool(faults)
    if not pool:
        raise NemesisError("no faults to schedule")
    rng = random.Random(seed)
    steps: list[Step] = []
    t = 0.0
    while True:
        start = t + rng.uniform(*heal_s)
        stop = start + rng.uniform(*fault_s)
        if stop > duration_s:
            break
        fault = rng.choice(pool)
        role = rng.choice([None, *roles]) if roles else None
        instance = aimed(fault, role, nodes, rng)
        steps.append(Step(round(start, 3), "start", instance))
        steps.append(Step(round(stop, 3), "stop", instance))
        t = stop
    steps.append(Step(round(max(t, duration_s), 3), "heal"))
    return Schedule(seed=seed, nodes=tuple(sorted(nodes)), steps=tuple(steps))


def each_fault_once(
    seed: int,
    nodes: Sequence[int],
    faults: Sequence[Fault | str] | str,
    *,
    fault_s: tuple[float, float] = (5.0, 10.0),
    heal_s: tuple[float, float] = (5.0, 10.0),
) -> Schedule:
    """Every fault of `faults` once, in an order drawn from `seed`, each after a heal period
    and kept for a fault period drawn from `heal_s` and `fault_s`, then a final heal: where
    `generate_schedule`'s draw with replacement would leave some out. A seed names it."""
    pool = fault_pool(faults)
    if not pool:
        raise NemesisError("no faults to schedule")
    rng = random.Random(seed)
    steps: list[Step] = []
    t = 0.0
    for fault in rng.sample(pool, len(pool)):
        start = t + rng.uniform(*heal_s)
        stop = start + rng.uniform(*fault_s)
        instance = aimed(fault, None, nodes, rng)
        steps += [Step(round(start, 3), "start", instance), Step(round(stop, 3), "stop", instance)]
        t = stop
    steps.append(Step(round(t + heal_s[0], 3), "heal"))
    return Schedule(seed=seed, nodes=tuple(sorted(nodes)), steps=tuple(steps))


def schedule_strategy(
    nodes: Sequence[int],
    faults: Sequence[Fault | str] | str,
    *,
    max_faults: int = 6,
    heal_s: tuple[float, float] = (1.0, 10.0),
    fault_s: tuple[float, float] = (1.0, 10.0),
    roles: Sequence[str] = (),
) -> Any:
    """A Hypothesis strategy of schedules (same shape as `generate_schedule`).

    Each cycle is drawn as (fault, a seed for choosing its victims, heal period, fault
    period), so a failing schedule shrinks toward fewer, shorter, earlier faults. The
    schedule's JSON, not a seed, is what replays it (`seed` is 0).
    """
    from hypothesis import strategies as st

    pool = fault_pool(faults)
    ordered = sorted(nodes)

    def build(cycles: list[tuple[Fault, int, float, float, str | None]]) -> Schedule:
        steps: list[Step] = []
        t = 0.0
        for fault, victims_seed, heal, hold, role in cycles:
            start = round(t + heal, 3)
            stop = round(start + hold, 3)
            instance = aimed(fault, role, ordered, random.Random(victims_seed))
            steps += [Step(start, "start", instance), Step(stop, "stop", instance)]
            t = stop
        steps.append(Step(t, "heal"))
        return Schedule(seed=0, nodes=tuple(ordered), steps=tuple(steps))

    cycle = st.tuples(
        st.sampled_from(pool),
        st.integers(0, 2**32 - 1),
        st.floats(*heal_s, allow_nan=False),
        st.floats(*fault_s, allow_nan=False),
        st.sampled_from([None, *roles]) if roles else st.none(),
    )
    return st.lists(cycle, max_size=max_faults).map(build)


def program_strategy(
    nodes: Sequence[int],
    faults: Sequence[Fault | str] | str,
    *,
    max_steps: int = 8,
    keys: Sequence[str] = ("a", "b", "c"),
    max_records: int = 5,
    cluster: Mapping[str, Any] | None = None,
    roles: Sequence[str] = (),
) -> Any:
    """A Hypothesis strategy of untimed schedules mixing client steps and faults.

    Moves are drawn freely (append, read, start a fault, heal) and then kept meaningful: one
    fault at a time (a majority stays up), no heal of nothing, and always a final heal.
    Shrinking removes moves, so a failure shrinks toward the fewest steps that still fail.
    With `roles`, a start may be aimed at one of them (templates such as
    ``shard-owner:{stream}/key=a`` are bound by the player: `Schedule.bind`).
    """
    from hypothesis import strategies as st

    pool = fault_pool(faults)
    ordered = tuple(sorted(nodes))

    def build(moves: list[tuple[Any, ...]]) -> Schedule:
        steps: list[Step] = []
        active = False
        for move in moves:
            kind = move[0]
            if kind == "start" and not active:
                fault, victims_seed = move[1], move[2]
                instance = aimed(fault, move[3], ordered, random.Random(victims_seed))
                steps.append(Step(None, "start", instance))
                active = True
            elif kind == "heal" and active:
                steps.append(Step(None, "heal"))
                active = False
            elif kind == "append":
                steps.append(Step(None, "append", args={"key": move[1], "records": move[2]}))
            elif kind == "read":
                steps.append(Step(None, "read"))
        if not steps or steps[-1].action != "heal":
            steps.append(Step(None, "heal"))
        return Schedule(seed=0, nodes=ordered, steps=tuple(steps), cluster=dict(cluster or {}))

    move = st.one_of(
        st.tuples(st.just("append"), st.sampled_from(list(keys)), st.integers(1, max_records)),
        st.tuples(st.just("read")),
        st.tuples(st.just("start"), st.sampled_from(pool), st.integers(0, 2**32 - 1),
                  st.sampled_from([None, *roles]) if roles else st.none()),
        st.tuples(st.just("heal")),
    )
    return st.lists(move, max_size=max_steps).map(build)


# -- the consumer ------------------------------------------------------------------------------


def perform(step: Step, nemesis: Nemesis, client: Callable[[Step], None] | None = None) -> None:
    """Carry out one step: nemesis steps on `nemesis`, client steps by `client`."""
    if step.action in ("start", "stop"):
        if step.fault is None:
            raise NemesisError(f"a {step.action} step without a fault: {step.to_json()}")
        nemesis.invoke(step.fault, step.action)
    elif step.action == "heal":
        nemesis.heal()
    elif step.action == "wait":
        time.sleep(float(step.args.get("seconds", 1)))
    elif client is None:
        raise NemesisError(
            f"the schedule has a client step ({step.action}); play it with a client that "
            "carries out append and read (harness.faults.schedule_runner)"
        )
    else:
        client(step)


def play(
    schedule: Schedule,
    nemesis: Nemesis,
    *,
    client: Callable[[Step], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Perform each step at its time, bounded by the schedule's duration; `stop` ends it
    early. Returns whether the last step performed was a heal (else the caller heals)."""
    began = clock()
    healed = False
    for step in schedule:
        wait = 0.0 if step.at_s is None else began + step.at_s - clock()
        if stop is not None:
            if stop.wait(max(wait, 0.0)):
                return False
        elif wait > 0:
            time.sleep(wait)
        perform(step, nemesis, client)
        healed = step.action == "heal"
    return healed
