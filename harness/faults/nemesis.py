"""Nemesis: faults as data, seeded fault schedules, and applying them to a cluster.

Three layers, the first two pure data (JSON round-trip, no cluster needed):

* `Fault`: a kind of fault with its parameters, named in `FAULTS` (``kill-minority``,
  ``partition-halves``, ``gossip-latency``, ...) and grouped in `PACKAGES`.
* `FaultInstance`: a fault resolved against the node ids with a seeded `random.Random`
  (which nodes, which grudge), plus the truth it creates: `down`, the HServer ids that are
  no longer running-and-reachable while it lasts (what the membership checker judges).
* `Schedule`: Jepsen-style alternation of a heal period then a fault period, each fault
  started then stopped, and always a final `heal` step; `generate_schedule(seed, ...)` makes
  the same schedule for the same seed.

`Nemesis(cluster, history)` applies instances through the `Cluster` handle
(harness.cluster) and Toxiproxy (harness.faults.toxiproxy) and records each action as
a nemesis op pair in the history: ``process="nemesis"``, ``f`` = the fault's name, value =
the instance's JSON plus ``"action"`` (start/stop/heal); the completion adds ``"down"`` and
``"up"``. `join(n)` starts a late node (a brand-new member) and is recorded the same way.
`teardown()` always heals everything it broke, also after errors.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import HarnessError
from harness.faults import partition as grudges

if TYPE_CHECKING:
    from harness.cluster import Cluster
    from harness.faults.toxiproxy import ToxiproxyHandle
    from harness.history import History, Op

PROCESS_KINDS = ("kill", "pause", "restart")
STORE_KINDS = ("kill-store", "restart-store")
GRUDGES = ("halves", "isolate-one", "majorities-ring", "bridge")
LINKS = ("client", "gossip", "store")
TARGETS = ("one", "minority", "majority", "all")

# Toxiproxy toxic types with the attributes the harness uses by default (Toxiproxy's names
# and units: ms, KB/s, bytes, µs). "down" is not a toxic but the proxy disabled.
TOXICS: dict[str, dict[str, int]] = {
    "latency": {"latency": 200, "jitter": 50},
    "bandwidth": {"rate": 16},
    "timeout": {"timeout": 0},  # 0: hold the data and never close, a black hole
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 64, "size_variation": 32, "delay": 100},
    "down": {},
}


class NemesisError(HarnessError):
    """A fault or schedule that cannot be built or applied; the message says why."""


@dataclass(frozen=True)
class Fault:
    """One kind of fault; `resolve` turns it into a concrete `FaultInstance`."""

    kind: str  # kill | pause | restart | partition | toxic | kill-store | restart-store
    target: str = "one"  # which servers: one | minority | majority | all
    grudge: str | None = None  # partition: halves | isolate-one | majorities-ring | bridge
    link: str | None = None  # toxic: client | gossip | store
    toxic: str | None = None  # toxic: a TOXICS key
    attributes: Mapping[str, int] = field(default_factory=dict)
    stream: str = "downstream"  # toxic direction: downstream (server->client) or upstream

    def __post_init__(self) -> None:
        known = (*PROCESS_KINDS, "partition", "toxic", *STORE_KINDS)
        if self.kind not in known:
            raise NemesisError(f"unknown fault kind {self.kind!r}; known: {', '.join(known)}")
        if self.target not in TARGETS:
            raise NemesisError(f"unknown target {self.target!r}; use {', '.join(TARGETS)}")
        if self.kind == "partition" and self.grudge not in GRUDGES:
            raise NemesisError(
                f"partition needs grudge one of {', '.join(GRUDGES)}, got {self.grudge!r}"
            )
        if self.kind == "toxic":
            if self.link not in LINKS:
                raise NemesisError(f"toxic needs link one of {', '.join(LINKS)}")
            if self.toxic not in TOXICS:
                raise NemesisError(
                    f"unknown toxic {self.toxic!r}; known: {', '.join(sorted(TOXICS))}"
                )
            if self.stream not in ("downstream", "upstream"):
                raise NemesisError("toxic stream must be downstream or upstream")
            if not self.attributes:
                object.__setattr__(self, "attributes", dict(TOXICS[self.toxic]))

    @property
    def name(self) -> str:
        if self.kind in PROCESS_KINDS:
            return f"{self.kind}-{self.target}"
        if self.kind == "partition":
            return f"partition-{self.grudge}"
        if self.kind == "toxic":
            assert self.toxic is not None
            base = f"{self.link}-{self.toxic.replace('_', '-')}"
            return base if self.link == "store" or self.target == "one" else f"{base}-{self.target}"
        return self.kind

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "target": self.target}
        if self.grudge is not None:
            d["grudge"] = self.grudge
        if self.kind == "toxic":
            d.update(link=self.link, toxic=self.toxic, stream=self.stream)
            d["attributes"] = dict(self.attributes)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Fault:
        return cls(
            kind=d["kind"],
            target=d.get("target", "one"),
            grudge=d.get("grudge"),
            link=d.get("link"),
            toxic=d.get("toxic"),
            attributes=dict(d.get("attributes") or {}),
            stream=d.get("stream", "downstream"),
        )

    def on(self, *nodes: int) -> FaultInstance:
        """This fault on the given servers (for suites that choose the victims themselves)."""
        if self.kind == "partition":
            raise NemesisError("a partition is resolved from all nodes: use resolve(nodes, rng)")
        chosen = tuple(sorted(nodes))
        down: tuple[int, ...] = ()
        # Only a stopped process is down. A toxic on a node's gossip proxy cuts what reaches
        # the node, not what it sends: it still pings the others and hears through their acks
        # that it is suspected, so correct SWIM refutes and the node stays a member (measured
        # as false suspicions and flaps). Cutting a node off both ways is a partition.
        if self.kind in ("kill", "pause"):
            down = chosen
        if self.kind == "toxic" and self.link == "store":
            chosen = ()
        return FaultInstance(fault=self, nodes=chosen, down=down)

    def resolve(self, nodes: Sequence[int], rng: random.Random) -> FaultInstance:
        """Choose the affected nodes (and grudge) with `rng`; compute the truth it creates."""
        nodes = sorted(nodes)
        if not nodes:
            raise NemesisError("a fault needs at least one server node")
        chosen: list[int] = []
        grudge: dict[int, frozenset[int]] | None = None
        down: list[int] = []
        if self.kind in PROCESS_KINDS or (self.kind == "toxic" and self.link != "store"):
            return self.on(*rng.sample(nodes, _count(self.target, len(nodes))))
        if self.kind == "partition":
            grudge = _make_grudge(self.grudge or "", nodes, rng)
            down = _outside_main_component(grudge, nodes)
            chosen = sorted({n for n, g in grudge.items() if g})
        return FaultInstance(
            fault=self, nodes=tuple(chosen), grudge=grudge, down=tuple(sorted(down))
        )


def _count(target: str, n: int) -> int:
    if target == "one":
        return 1
    if target == "minority":
        return max(1, (n - 1) // 2)
    if target == "majority":
        return min(n, n // 2 + 1)
    return n


def _make_grudge(kind: str, nodes: Sequence[int], rng: random.Random) -> dict[int, frozenset[int]]:
    try:
        if kind == "halves":
            return grudges.halves(nodes, rng)
        if kind == "isolate-one":
            return grudges.isolate(rng.choice(list(nodes)), nodes)
        if kind == "majorities-ring":
            return grudges.majorities_ring(nodes, rng)
        if kind == "bridge":
            order = list(nodes)
            rng.shuffle(order)
            return grudges.bridge(order)
    except grudges.GrudgeError as exc:
        raise NemesisError(f"partition {kind}: {exc}") from None
    raise NemesisError(f"unknown grudge {kind!r}; known: {', '.join(GRUDGES)}")


def _outside_main_component(
    grudge: Mapping[int, frozenset[int]], nodes: Sequence[int]
) -> list[int]:
    """Nodes not connected (over links open both ways, transitively) to the largest group.

    Transitive on purpose: in a majorities ring or a bridge every node still reaches every
    other through some peer, and SWIM's indirect probes exist to keep such nodes alive. Of
    two equal groups the one holding the lowest id counts as the main one.
    """
    adjacent: dict[int, set[int]] = {n: set() for n in nodes}
    for a in nodes:
        for b in nodes:
            if a < b and b not in grudge.get(a, ()) and a not in grudge.get(b, ()):
                adjacent[a].add(b)
                adjacent[b].add(a)
    groups: list[set[int]] = []
    left = set(nodes)
    while left:
        start = min(left)
        group, frontier = {start}, [start]
        while frontier:
            for nb in adjacent[frontier.pop()]:
                if nb not in group:
                    group.add(nb)
                    frontier.append(nb)
        groups.append(group)
        left -= group
    main = max(groups, key=lambda g: (len(g), -min(g)))
    return sorted(set(nodes) - main)


@dataclass(frozen=True)
class FaultInstance:
    """A fault resolved for one cluster: the nodes it hits and who is down while it lasts."""

    fault: Fault
    nodes: tuple[int, ...] = ()
    grudge: Mapping[int, frozenset[int]] | None = None
    down: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.fault.name

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"fault": self.fault.to_json(), "nodes": list(self.nodes)}
        if self.grudge is not None:
            d["grudge"] = {str(k): sorted(v) for k, v in sorted(self.grudge.items())}
        d["down"] = list(self.down)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FaultInstance:
        g = d.get("grudge")
        return cls(
            fault=Fault.from_json(d["fault"]),
            nodes=tuple(int(n) for n in d.get("nodes") or ()),
            grudge=None
            if g is None
            else {int(k): frozenset(int(x) for x in v) for k, v in g.items()},
            down=tuple(int(n) for n in d.get("down") or ()),
        )


# -- the catalogue -----------------------------------------------------------------------------


def _catalogue() -> dict[str, Fault]:
    faults: list[Fault] = []
    for kind in PROCESS_KINDS:
        for target in ("one", "minority", "majority"):
            faults.append(Fault(kind, target))
    for g in GRUDGES:
        faults.append(Fault("partition", grudge=g))
    for link in LINKS:
        for toxic in TOXICS:
            faults.append(Fault("toxic", link=link, toxic=toxic))
    faults.append(Fault("kill-store"))
    faults.append(Fault("restart-store"))
    return {f.name: f for f in faults}


FAULTS: dict[str, Fault] = _catalogue()

PACKAGES: dict[str, tuple[str, ...]] = {
    "kill": ("kill-one", "kill-minority"),
    "pause": ("pause-one", "pause-minority"),
    "restart": ("restart-one", "restart-minority"),
    "process": ("kill-one", "kill-minority", "pause-one", "pause-minority", "restart-one"),
    "partition": tuple(f"partition-{g}" for g in GRUDGES),
    "client-toxics": tuple(f"client-{t.replace('_', '-')}" for t in TOXICS),
    "gossip-toxics": tuple(f"gossip-{t.replace('_', '-')}" for t in TOXICS),
    "store-toxics": tuple(f"store-{t.replace('_', '-')}" for t in TOXICS),
    "store": ("kill-store", "restart-store"),
}


def parse_faults(names: str | Iterable[str]) -> list[Fault]:
    """Faults from names and package names ("kill-one,partition" or a list of them)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[Fault] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        expanded = PACKAGES.get(name, (name,))
        for n in expanded:
            fault = FAULTS.get(n)
            if fault is None:
                raise NemesisError(
                    f"unknown fault {n!r}; faults: {', '.join(sorted(FAULTS))}; "
                    f"packages: {', '.join(sorted(PACKAGES))}"
                )
            if fault not in out:
                out.append(fault)
    if not out:
        raise NemesisError("no faults named; give fault or package names, e.g. 'kill,partition'")
    return out


# -- schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """At `at_s` seconds after the schedule starts: start or stop `fault`, or heal all."""

    at_s: float
    action: str  # start | stop | heal
    fault: FaultInstance | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"at_s": self.at_s, "action": self.action}
        if self.fault is not None:
            d["fault"] = self.fault.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Step:
        f = d.get("fault")
        return cls(
            at_s=float(d["at_s"]),
            action=d["action"],
            fault=None if f is None else FaultInstance.from_json(f),
        )


@dataclass(frozen=True)
class Schedule:
    seed: int
    nodes: tuple[int, ...]
    steps: tuple[Step, ...]

    @property
    def duration_s(self) -> float:
        return self.steps[-1].at_s if self.steps else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "nodes": list(self.nodes),
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Schedule:
        try:
            steps = tuple(Step.from_json(s) for s in d["steps"])
            nodes = tuple(int(n) for n in d["nodes"])
            schedule = cls(seed=int(d["seed"]), nodes=nodes, steps=steps)
        except (KeyError, TypeError, ValueError, NemesisError) as exc:
            raise NemesisError(
                f"not a fault schedule ({exc}); expected seed, nodes and steps as written by "
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
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise NemesisError(f"cannot read fault schedule {path}: {exc}") from None

    def validate(self) -> None:
        """Steps in time order, every start stopped, and a final heal."""
        active: list[str] = []
        last = 0.0
        for step in self.steps:
            if step.at_s < last:
                raise NemesisError(f"schedule steps go back in time at {step.at_s} s")
            last = step.at_s
            if step.action == "start":
                if step.fault is None:
                    raise NemesisError(f"schedule starts no fault at {step.at_s} s")
                active.append(step.fault.name)
            elif step.action == "stop":
                if step.fault is None or step.fault.name not in active:
                    raise NemesisError(f"schedule stops a fault that is not running at {last} s")
                active.remove(step.fault.name)
            elif step.action == "heal":
                active.clear()
            else:
                raise NemesisError(f"unknown schedule action {step.action!r}")
        if not self.steps or self.steps[-1].action != "heal":
            raise NemesisError("a schedule must end with a heal step")

    def describe(self) -> str:
        """One line per step, for failure messages (replay with the seed or the JSON)."""
        lines = [f"fault schedule seed={self.seed} nodes={list(self.nodes)}"]
        for s in self.steps:
            what = "" if s.fault is None else f" {s.fault.name} nodes={list(s.fault.nodes)}"
            down = f" down={list(s.fault.down)}" if s.fault and s.fault.down else ""
            lines.append(f"  {s.at_s:8.2f}s {s.action}{what}{down}")
        return "\n".join(lines)


def generate_schedule(
    seed: int,
    nodes: Sequence[int],
    faults: Sequence[Fault] | str,
    *,
    duration_s: float,
    fault_s: tuple[float, float] = (5.0, 10.0),
    heal_s: tuple[float, float] = (5.0, 10.0),
) -> Schedule:
    """Heal period, fault period, repeated until `duration_s`, then a final heal.

    Each cycle waits a heal period drawn from `heal_s`, starts one fault drawn from
    `faults` (resolved against `nodes`), keeps it for a period drawn from `fault_s` and stops
    it. Every draw comes from `random.Random(seed)`, so a seed names a schedule.
    """
    if duration_s <= 0:
        raise NemesisError("duration_s must be positive")
    for name, (lo, hi) in (("fault_s", fault_s), ("heal_s", heal_s)):
        if not 0 < lo <= hi:
            raise NemesisError(f"{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
    pool = parse_faults(faults) if isinstance(faults, str) else list(faults)
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
        instance = rng.choice(pool).resolve(nodes, rng)
        steps.append(Step(round(start, 3), "start", instance))
        steps.append(Step(round(stop, 3), "stop", instance))
        t = stop
    steps.append(Step(round(max(t, duration_s), 3), "heal"))
    return Schedule(seed=seed, nodes=tuple(sorted(nodes)), steps=tuple(steps))


def schedule_strategy(
    nodes: Sequence[int],
    faults: Sequence[Fault] | str,
    *,
    max_faults: int = 6,
    heal_s: tuple[float, float] = (1.0, 10.0),
    fault_s: tuple[float, float] = (1.0, 10.0),
) -> Any:
    """A Hypothesis strategy of schedules (same shape as `generate_schedule`).

    Each cycle is drawn as (fault, a seed for choosing its victims, heal period, fault
    period), so a failing schedule shrinks toward fewer, shorter, earlier faults. The
    schedule's JSON, not a seed, is what replays it (`seed` is 0).
    """
    from hypothesis import strategies as st

    pool = parse_faults(faults) if isinstance(faults, str) else list(faults)
    ordered = sorted(nodes)

    def build(cycles: list[tuple[Fault, int, float, float]]) -> Schedule:
        steps: list[Step] = []
        t = 0.0
        for fault, victims_seed, heal, hold in cycles:
            start = round(t + heal, 3)
            stop = round(start + hold, 3)
            instance = fault.resolve(ordered, random.Random(victims_seed))
            steps += [Step(start, "start", instance), Step(stop, "stop", instance)]
            t = stop
        steps.append(Step(t, "heal"))
        return Schedule(seed=0, nodes=tuple(ordered), steps=tuple(steps))

    cycle = st.tuples(
        st.sampled_from(pool),
        st.integers(0, 2**32 - 1),
        st.floats(*heal_s, allow_nan=False),
        st.floats(*fault_s, allow_nan=False),
    )
    return st.lists(cycle, max_size=max_faults).map(build)


# -- applying faults ---------------------------------------------------------------------------


class Nemesis:
    """Applies fault instances to a cluster, recording each action in a history.

    Not re-entrant: one schedule at a time. Tracks what it broke (killed and paused nodes,
    proxies disabled, toxics added, a partition, a killed store) so `heal()` and `teardown()`
    undo exactly that, whatever happened in between.
    """

    def __init__(
        self,
        cluster: Cluster,
        history: History | None = None,
        *,
        toxiproxy: ToxiproxyHandle | None = None,
    ) -> None:
        self.cluster = cluster
        self.history = history
        self._toxiproxy = toxiproxy
        self._killed: set[int] = set()
        self._paused: set[int] = set()
        self._toxics: dict[str, list[tuple[str, str | None]]] = {}  # fault name -> (proxy, toxic)
        self._partitioned = False
        self._store_killed = False
        # Late nodes not started yet are down until they join.
        self._down: set[int] = self._pending_late_nodes()

    @classmethod
    def setup(cls, cluster: Cluster, history: History | None = None) -> Nemesis:
        return cls(cluster, history)

    # -- one action, recorded
    def invoke(self, instance: FaultInstance, action: str = "start") -> Op | None:
        """Start or stop one fault instance; returns the (last) completion op.

        A restart is recorded as two actions, "kill" then "start", so the history's truth
        has the node down for as long as the restart took.
        """
        if action not in ("start", "stop"):
            raise NemesisError(f"unknown nemesis action {action!r}; use start or stop")
        value = {"action": action, **instance.to_json()}
        if instance.fault.kind == "restart" and action == "start":
            nodes = list(instance.nodes)
            self._record(instance.name, {**value, "phase": "kill"}, lambda: self._bounce(nodes, 0))
            return self._record(
                instance.name, {**value, "phase": "start"}, lambda: self._bounce(nodes, 1)
            )
        return self._record(instance.name, value, lambda: self._apply(instance, action))

    def _pending_late_nodes(self) -> set[int]:
        return {n.id for n in getattr(self.cluster, "nodes", ()) if n.state == "pending"}

    def join(self, n: int) -> Op | None:
        """Start late node n (`ClusterSpec.late_nodes`), a brand-new server joining the
        running cluster; recorded as a `join` op whose completion has n in `up`. A node that
        comes up without having gone down is what the membership checker reads as a join.
        """

        def start() -> tuple[set[int], set[int]]:
            self.cluster.join(n)
            return set(), {n}

        return self._record("join", {"action": "start", "nodes": [n]}, start)

    def heal(self) -> Op | None:
        """Undo everything this nemesis broke; recorded as one `heal` op."""
        return self._record("heal", {"action": "heal"}, self._heal_all)

    def teardown(self) -> None:
        """Always heal: every undo is tried, then one NemesisError lists any that failed."""
        self.heal()

    def _record(
        self, name: str, value: dict[str, Any], effect: Callable[[], tuple[set[int], set[int]]]
    ) -> Op | None:
        inv = self.history.invoke("nemesis", name, value) if self.history is not None else None
        try:
            down, up = effect()
        except Exception as exc:
            if self.history is not None and inv is not None:
                from harness.cluster import UnsupportedFault
                from harness.history import describe_error

                # Refusals come before any effect: definitely not applied. Anything else may
                # have hit some nodes already, so the outcome is unknown.
                refused = isinstance(exc, UnsupportedFault | NemesisError)
                kind = "fail" if refused else "info"
                self.history.complete(inv, kind, value, error=describe_error(exc))
            raise
        up &= self._down  # only what was down can come back up
        self._down |= down
        self._down -= up
        if self.history is None or inv is None:
            return None
        return self.history.ok(inv, {**value, "down": sorted(down), "up": sorted(up)})

    def _bounce(self, nodes: list[int], phase: int) -> tuple[set[int], set[int]]:
        for n in nodes:
            if phase == 0:
                self.cluster.kill(n)
                self._killed.add(n)
            else:
                self.cluster.restart(n)
                self._killed.discard(n)
        return (set(nodes), set()) if phase == 0 else (set(), set(nodes))

    def run(
        self,
        schedule: Schedule,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Play `schedule` in real time (bounded by its duration); heal at the end, always."""
        began = clock()
        try:
            for step in schedule.steps:
                wait = began + step.at_s - clock()
                if wait > 0:
                    if stop is not None:
                        if stop.wait(wait):
                            break
                    else:
                        time.sleep(wait)
                if step.action == "heal":
                    break
                if step.fault is None:
                    raise NemesisError(f"schedule step at {step.at_s} s has no fault")
                self.invoke(step.fault, step.action)
        finally:
            self.teardown()

    # -- the effects
    def _apply(self, inst: FaultInstance, action: str) -> tuple[set[int], set[int]]:
        fault = inst.fault
        start = action == "start"
        c = self.cluster
        down: set[int] = set()
        up: set[int] = set()
        if fault.kind == "kill":
            for n in inst.nodes:
                if start:
                    c.kill(n)
                    self._killed.add(n)
                elif n in self._killed:
                    c.restart(n)
                    self._killed.discard(n)
            (down if start else up).update(inst.nodes)
        elif fault.kind == "pause":
            for n in inst.nodes:
                if start:
                    c.pause(n)
                    self._paused.add(n)
                elif n in self._paused:
                    c.resume(n)
                    self._paused.discard(n)
            (down if start else up).update(inst.nodes)
        elif fault.kind == "partition":
            if start:
                c.partition(dict(inst.grudge or {}))
                self._partitioned = True
                down.update(inst.down)
            else:
                c.heal()
                self._partitioned = False
                up.update(inst.down)
        elif fault.kind == "toxic":
            if start:
                self._start_toxic(inst)
                down.update(inst.down)
            else:
                self._stop_toxic(inst)
                up.update(inst.down)
        elif fault.kind == "kill-store":
            if start:
                c.kill_store()
                self._store_killed = True
            elif self._store_killed:
                c.restart_store()
                self._store_killed = False
        elif fault.kind == "restart-store":
            if start:
                c.restart_store()
        # A node another fault still holds down is not back up.
        up -= self._killed | self._paused
        return down, up

    def _proxy_names(self, inst: FaultInstance) -> list[str]:
        fault = inst.fault
        if fault.link == "store":
            names = [p.name for (proc, port), p in self.cluster.proxies.items() if port == "store"]
            if not names:
                raise NemesisError(
                    "this cluster has no proxy in front of the store; start it with toxiproxy "
                    "enabled to inject store-link faults"
                )
            return names
        return [self.cluster.proxy(n, fault.link or "client").name for n in inst.nodes]

    def _toxiproxy_handle(self) -> ToxiproxyHandle:
        if self._toxiproxy is None:
            url = self.cluster.toxiproxy_url
            if not url:
                raise NemesisError(
                    "toxic faults need Toxiproxy: start the cluster with toxiproxy enabled"
                )
            from harness.faults.toxiproxy import connect_toxiproxy

            self._toxiproxy = connect_toxiproxy(url)
        return self._toxiproxy

    def _start_toxic(self, inst: FaultInstance) -> None:
        fault = inst.fault
        tp = self._toxiproxy_handle()
        applied = self._toxics.setdefault(inst.name, [])
        for proxy in self._proxy_names(inst):
            if fault.toxic == "down":
                tp.set_enabled(proxy, False)
                applied.append((proxy, None))
            else:
                toxic_name = f"nemesis-{inst.name}"
                tp.add_toxic(
                    proxy,
                    fault.toxic or "",
                    dict(fault.attributes),
                    stream=fault.stream,
                    name=toxic_name,
                    toxicity=1.0,
                )
                applied.append((proxy, toxic_name))

    def _stop_toxic(self, inst: FaultInstance) -> None:
        tp = self._toxiproxy_handle()
        for proxy, toxic in self._toxics.pop(inst.name, []):
            if toxic is None:
                tp.set_enabled(proxy, True)
            else:
                tp.remove_toxic(proxy, toxic)

    def _heal_all(self) -> tuple[set[int], set[int]]:
        errors: list[str] = []
        c = self.cluster

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        for name in list(self._toxics):
            for proxy, toxic in self._toxics.pop(name):
                tp = self._toxiproxy_handle()
                if toxic is None:
                    attempt(f"enable proxy {proxy}", tp.set_enabled, proxy, True)
                else:
                    attempt(f"remove toxic {toxic} from {proxy}", tp.remove_toxic, proxy, toxic)
        if self._partitioned:
            attempt("heal partition", c.heal)
            self._partitioned = False
        for n in sorted(self._paused):
            attempt(f"resume node {n}", c.resume, n)
        self._paused.clear()
        for n in sorted(self._killed):
            attempt(f"restart node {n}", c.restart, n)
        self._killed.clear()
        if self._store_killed:
            attempt("restart the store", c.restart_store)
            self._store_killed = False
        # A late node that never joined stays down: healing does not start it.
        up = self._down - self._pending_late_nodes()
        if errors:
            raise NemesisError("healing the cluster failed: " + "; ".join(errors))
        return set(), up


def always_heal_last(schedule: Schedule) -> Schedule:
    """The schedule with a final heal step added if it lacks one."""
    if schedule.steps and schedule.steps[-1].action == "heal":
        return schedule
    end = schedule.steps[-1].at_s if schedule.steps else 0.0
    return replace(schedule, steps=(*schedule.steps, Step(end, "heal")))
