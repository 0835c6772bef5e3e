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
from dataclasses import dataclass, field
from typing import Any

from harness.faults import partition as grudges
from harness.faults.partition import GRUDGES
from harness.nemesis.base import NemesisError

PROCESS_KINDS = ("kill", "pause", "restart")
STORE_KINDS = ("kill-store", "restart-store")
# join: a late node starts for the first time; crash: a process of this machine (a client
# driver, a connector program) is SIGKILLed, as an application would crash.
KINDS = (*PROCESS_KINDS, "partition", "toxic", *STORE_KINDS, "join", "crash")
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
        if self.kind == "crash" and not isinstance(self.attributes.get("pid"), int):
            raise NemesisError("a crash needs the process id: attributes={'pid': <pid>}")

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
        if self.kind == "crash" and self.program:
            return f"crash-{self.program}"
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
        )

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
        if self.kind in ("kill", "pause"):
            down = chosen
        if (self.kind == "toxic" and self.link == "store") or self.kind in (*STORE_KINDS, "crash"):
            chosen = ()
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
        if self.kind in ("join", "crash"):
            raise NemesisError(f"a {self.kind} is aimed by the suite: use on(...)")
        if self.kind == "partition":
            try:
                grudge = grudges.named(self.grudge or "", nodes, rng)
            except grudges.GrudgeError as exc:
                raise NemesisError(f"partition {self.grudge}: {exc}") from None
            return self.against(grudge, nodes)
        if self.kind in PROCESS_KINDS or (self.kind == "toxic" and self.link != "store"):
            return self.on(*rng.sample(nodes, _count(self.target, len(nodes))))
        return self.on()


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
