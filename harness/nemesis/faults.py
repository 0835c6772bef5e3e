"""Faults as data: what to break, resolved against a cluster's nodes, with the truth it makes.

* `Fault`: a kind of fault with its parameters, named in `FAULTS` (``kill-minority``,
  ``partition-halves``, ``gossip-latency``, ...) and grouped in `PACKAGES`.
* `FaultInstance`: a fault aimed at nodes — drawn with a seeded `random.Random`
  (`resolve`), chosen by the suite (`on`), or an explicit grudge (`against`) — plus the
  truth it creates: `down`, the HServer ids no longer running-and-reachable while it
  lasts (what the membership checker judges).

Both round-trip through JSON; histories and saved schedules hold exactly these shapes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.faults import partition as grudges
from harness.faults.partition import GRUDGES
from harness.nemesis.base import NemesisError

PROCESS_KINDS = ("kill", "pause", "restart")
STORE_KINDS = ("kill-store", "restart-store")
# join: a late node starts for the first time; crash: a process of this machine (a client
# driver, a connector program) is SIGKILLed, as an application would crash; freeze: one is
# stopped (SIGSTOP) until the fault ends, as a stalled program would be.
PROGRAM_KINDS = ("crash", "freeze")
KINDS: tuple[str, ...] = (*PROCESS_KINDS, "partition", "toxic", *STORE_KINDS, "join",
                          *PROGRAM_KINDS)
# clock: a node's realtime clock set apart from true time (harness.nemesis.clock).
KINDS = (*KINDS, "clock")
# The store's disk (harness.nemesis.disk; the lazy disk, harness.lazydisk): a crash that
# loses every unsynced write, and IO latency or errno faults on chosen operations.
DISK_KINDS = ("crash-lose-unsynced", "disk-latency", "disk-errno")
KINDS = (*KINDS, *DISK_KINDS)
# stress-cpu, stress-memory, throttle-cpu: a node left short of CPU or memory, still running
# and a member (harness.nemesis.stress); leave, rolling-restart: membership changes, a node
# stopped gracefully for good or every node restarted in turn (harness.nemesis
# .membership_changes).
STRESS_KINDS = ("stress-cpu", "stress-memory", "throttle-cpu")
CHANGE_KINDS = ("leave", "rolling-restart")
KINDS = (*KINDS, *STRESS_KINDS, *CHANGE_KINDS)
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

# Clock fault modes with their default attributes (harness.nemesis.clock says what each
# does): ms for times, per mille for a rate (1500: the clock runs 1.5 times as fast).
CLOCKS: dict[str, dict[str, int]] = {
    "offset": {"offset_ms": 30_000},
    "bump": {"delta_ms": 30_000},
    "strobe": {"delta_ms": 30_000, "period_ms": 200, "duration_ms": 5_000},
    "rate": {"rate_permille": 1_500},
}

# Stress kinds with their default attributes (harness.nemesis.stress says what each does):
# stress-cpu runs `workers` stress-ng CPU hogs on the node's CPU, each busy `load` percent
# of the time in bursts of `slice_ms`, real-time (SCHED_FIFO) when `realtime` is 1, so that
# a burst holds the node off the CPU; stress-memory has `workers` stress-ng VM hogs keep
# `megabytes` each; throttle-cpu lets the node's cgroup run `quota_percent` of every
# `period_ms`.
STRESSES: dict[str, dict[str, int]] = {
    "stress-cpu": {"workers": 1, "load": 60, "slice_ms": 200, "realtime": 1},
    "stress-memory": {"workers": 1, "megabytes": 256},
    "throttle-cpu": {"quota_percent": 10, "period_ms": 250},
}


@dataclass(frozen=True)
class Fault:
    """One kind of fault; `resolve`, `on` or `against` turn it into a `FaultInstance`."""

    kind: str  # one of KINDS
    target: str = "one"  # which servers: one | minority | majority | all
    grudge: str | None = None  # partition: one of GRUDGES
    link: str | None = None  # toxic: client | gossip | store
    toxic: str | None = None  # toxic: a TOXICS key
    attributes: Mapping[str, int] = field(default_factory=dict)  # toxic; crash: {"pid": n}
    stream: str = "downstream"  # toxic direction: downstream (server->client) or upstream
    program: str | None = None  # crash: what the crashed process is ("consumer", ...)
    clock: str | None = None  # clock: a CLOCKS key (offset, bump, strobe, rate)
    # Aimed at a role (harness.nemesis.roles: "subscription-owner:<sub>", "seed", ...): the
    # nodes are whoever holds it when the fault starts, asked of the cluster then.
    role: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise NemesisError(f"unknown fault kind {self.kind!r}; known: {', '.join(KINDS)}")
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
        if self.kind in PROGRAM_KINDS and not isinstance(self.attributes.get("pid"), int):
            raise NemesisError(f"a {self.kind} needs the process id: attributes={{'pid': <pid>}}")
        if self.kind == "clock":
            if self.clock not in CLOCKS:
                raise NemesisError(
                    f"a clock fault needs clock one of {', '.join(CLOCKS)}, got {self.clock!r}"
                )
            object.__setattr__(
                self, "attributes", {**CLOCKS[self.clock], **dict(self.attributes)}
            )
        if self.kind in STRESS_KINDS:
            object.__setattr__(
                self, "attributes", {**STRESSES[self.kind], **dict(self.attributes)}
            )
        if self.kind in DISK_KINDS:
            from harness.nemesis.disk import check_disk_fault

            object.__setattr__(self, "attributes", check_disk_fault(self.kind, self.attributes))
        if self.role is not None:
            from harness.nemesis.roles import check_aim

            check_aim(self.kind, self.role, self.grudge, self.link, self.target)

    @property
    def name(self) -> str:
        if self.role is not None:
            return f"{replace(self, role=None).name}@{self.role}"
        if self.kind in PROCESS_KINDS:
            return f"{self.kind}-{self.target}"
        if self.kind == "partition":
            return f"partition-{self.grudge}"
        if self.kind == "toxic":
            assert self.toxic is not None
            base = f"{self.link}-{self.toxic.replace('_', '-')}"
            return base if self.link == "store" or self.target == "one" else f"{base}-{self.target}"
        if self.kind in PROGRAM_KINDS and self.program:
            return f"{self.kind}-{self.program}"
        if self.kind == "clock":
            return _clock_name(self)
        if self.kind in (*STRESS_KINDS, "leave"):
            return f"{self.kind}-{self.target}"
        if self.kind == "disk-errno":
            from harness.nemesis.disk import errno_fault_name

            return errno_fault_name(self.attributes)
        return self.kind

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "target": self.target}
        if self.grudge is not None:
            d["grudge"] = self.grudge
        if self.kind == "toxic":
            d.update(link=self.link, toxic=self.toxic, stream=self.stream)
        if self.kind == "toxic" or self.attributes:
            d["attributes"] = dict(self.attributes)
        if self.program is not None:
            d["program"] = self.program
        if self.clock is not None:
            d["clock"] = self.clock
        if self.role is not None:
            d["role"] = self.role
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
            program=d.get("program"),
            clock=d.get("clock"),
            role=d.get("role"),
        )

    def aim(self, role: str) -> FaultInstance:
        """This fault aimed at `role`: its nodes are resolved by the Nemesis when it starts
        (harness.nemesis.roles), so the instance holds none until then."""
        return FaultInstance(fault=replace(self, role=role))

    def on(self, *nodes: int) -> FaultInstance:
        """This fault on the given servers (for suites that choose the victims themselves)."""
        if self.kind == "partition":
            raise NemesisError(
                "a partition is aimed by its grudge: use resolve(nodes, rng) or "
                "against(grudge, nodes)"
            )
        chosen = tuple(sorted(nodes))
        down: tuple[int, ...] = ()
        # Only a stopped process is down. A toxic on a node's gossip proxy cuts what reaches
        # the node, not what it sends: it still pings the others and hears through their acks
        # that it is suspected, so correct SWIM refutes and the node stays a member (measured
        # as false suspicions and flaps). Cutting a node off both ways is a partition.
        if self.kind in ("kill", "pause", "leave"):
            down = chosen
        if ((self.kind == "toxic" and self.link == "store")
                or self.kind in (*STORE_KINDS, *PROGRAM_KINDS)):
            chosen = ()
        if self.kind in DISK_KINDS:
            chosen = ()  # the store's disk: no server is hit, none is down
        return FaultInstance(fault=self, nodes=chosen, down=down)

    def against(self, grudge: grudges.Grudge, nodes: Sequence[int]) -> FaultInstance:
        """This partition with an explicit grudge (node -> nodes whose traffic it drops)."""
        if self.kind != "partition":
            raise NemesisError(f"only a partition takes a grudge, not {self.kind}")
        try:
            normalized = grudges.normalize(grudge, nodes)
        except grudges.GrudgeError as exc:
            raise NemesisError(f"{self.name}: {exc}") from None
        return FaultInstance(
            fault=self,
            nodes=tuple(sorted(n for n, dropped in normalized.items() if dropped)),
            grudge=normalized,
            down=tuple(grudges.cut_off(normalized, sorted(nodes))),
        )

    def resolve(self, nodes: Sequence[int], rng: random.Random) -> FaultInstance:
        """Choose the affected nodes (and grudge) with `rng`; compute the truth it creates."""
        nodes = sorted(nodes)
        if not nodes:
            raise NemesisError("a fault needs at least one server node")
        if self.role is not None:
            return FaultInstance(fault=self)  # resolved by the Nemesis when it starts
        if self.kind == "join":
            return self.on()  # the next late node: the join family picks it when it starts
        if self.kind == "rolling-restart":
            return self.on(*nodes)
        if self.kind in ("join", *PROGRAM_KINDS):
            raise NemesisError(f"a {self.kind} is aimed by the suite: use on(...)")
        if self.kind == "partition":
            try:
                grudge = grudges.named(self.grudge or "", nodes, rng)
            except grudges.GrudgeError as exc:
                raise NemesisError(f"partition {self.grudge}: {exc}") from None
            return self.against(grudge, nodes)
        if (self.kind in (*PROCESS_KINDS, "clock", *STRESS_KINDS, "leave")
                or (self.kind == "toxic" and self.link != "store")):
            return self.on(*rng.sample(nodes, _count(self.target, len(nodes))))
        return self.on()


def _clock_name(fault: Fault) -> str:
    """clock-offset-ahead / -behind, clock-bump-forward / -back, clock-strobe,
    clock-rate-fast / -slow; with the target when it is not one node."""
    a = fault.attributes
    base = f"clock-{fault.clock}"
    if fault.clock == "offset":
        base += "-ahead" if a.get("offset_ms", 0) >= 0 else "-behind"
    elif fault.clock == "bump":
        base += "-forward" if a.get("delta_ms", 0) >= 0 else "-back"
    elif fault.clock == "rate":
        base += "-fast" if a.get("rate_permille", 1000) >= 1000 else "-slow"
    return base if fault.target == "one" else f"{base}-{fault.target}"


def _count(target: str, n: int) -> int:
    if target == "one":
        return 1
    if target == "minority":
        return max(1, (n - 1) // 2)
    if target == "majority":
        return min(n, n // 2 + 1)
    return n


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
    faults.extend(CLOCK_FAULTS)
    faults.extend(DISK_FAULTS)
    faults.extend(STRESS_FAULTS)
    faults.extend(CHANGE_FAULTS)
    return {f.name: f for f in faults}


CLOCK_FAULTS = (
    Fault("clock", clock="offset", attributes={"offset_ms": 30_000}),
    Fault("clock", clock="offset", attributes={"offset_ms": -30_000}),
    Fault("clock", clock="bump", attributes={"delta_ms": 30_000}),
    Fault("clock", clock="bump", attributes={"delta_ms": -30_000}),
    Fault("clock", clock="strobe"),
    Fault("clock", clock="rate", attributes={"rate_permille": 1_500}),
    Fault("clock", clock="rate", attributes={"rate_permille": 500}),
)
STRESS_FAULTS = (Fault("stress-cpu"), Fault("stress-memory"), Fault("throttle-cpu"))
CHANGE_FAULTS = (Fault("leave"), Fault("rolling-restart", target="all"), Fault("join"))

# Attributes: latency in ms per op; errno number, the ops it hits (1 = on), how many calls
# fail (0: every call) and the chance per call in percent (harness.nemesis.disk).
DISK_FAULTS = (
    Fault("crash-lose-unsynced"),
    Fault("disk-latency", attributes={"write_ms": 20, "fsync_ms": 200}),
    Fault("disk-errno", attributes={"errno": 5, "write": 1, "fsync": 1}),  # EIO
    Fault("disk-errno", attributes={"errno": 28, "write": 1}),  # ENOSPC
)

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
    "clock": tuple(f.name for f in CLOCK_FAULTS),
    "disk": tuple(f.name for f in DISK_FAULTS),
    "stress": tuple(f.name for f in STRESS_FAULTS),
    "membership-changes": tuple(f.name for f in CHANGE_FAULTS),
}


def parse_faults(names: str | Iterable[str]) -> list[Fault]:
    """Faults from names and package names ("kill-one,partition" or a list of them)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[Fault] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        for n in PACKAGES.get(name, (name,)):
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
