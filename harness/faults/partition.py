"""Network partitions as data: grudges, with Jepsen's meanings.

A grudge maps a node to the set of nodes whose traffic it drops (Jepsen: "nodes it should
reject messages from"). It is directional: {1: {2}} cuts 2 -> 1 only. Backends apply a grudge
(the docker backend with iptables rules inside each container: for every node a and every b
in grudge[a], drop packets from b arriving at a) and undo it on `heal()`.

Node identifiers are HServer ids (ints). Random choices take an explicit `random.Random`, so
the run's seed reproduces the partition.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness import HarnessError

Grudge = Mapping[int, frozenset[int]]


class GrudgeError(HarnessError):
    pass


def complete_grudge(components: Iterable[Iterable[int]]) -> dict[int, frozenset[int]]:
    """Every node drops traffic from every node outside its own component."""
    parts = [frozenset(c) for c in components]
    everyone = frozenset().union(*parts) if parts else frozenset()
    seen: set[int] = set()
    for part in parts:
        if seen & part:
            raise GrudgeError(f"components overlap on {sorted(seen & part)}")
        seen |= part
    return {node: everyone - part for part in parts for node in part}


def bisect(nodes: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split in two; the first half is the smaller one when the count is odd (as Jepsen)."""
    middle = len(nodes) // 2
    return list(nodes[:middle]), list(nodes[middle:])


def halves(nodes: Sequence[int], rng: random.Random | None = None) -> dict[int, frozenset[int]]:
    """Cut the cluster into two halves (a minority and a majority); shuffled when rng given."""
    _need(nodes, 2, "halves")
    order = list(nodes)
    if rng is not None:
        rng.shuffle(order)
    return complete_grudge(bisect(order))


def isolate(node: int, nodes: Sequence[int]) -> dict[int, frozenset[int]]:
    """Cut one node off from all others, both directions."""
    if node not in nodes:
        raise GrudgeError(f"node {node} is not one of {list(nodes)}")
    _need(nodes, 2, "isolate")
    return complete_grudge([[node], [n for n in nodes if n != node]])


def majorities_ring(
    nodes: Sequence[int], rng: random.Random | None = None
) -> dict[int, frozenset[int]]:
    """Every node sees a majority (itself included), but no two nodes see the same majority.

    Nodes sit on a ring (shuffled when rng given); each sees the window of `n//2 + 1` ring
    positions centred on itself and drops everyone else. For odd n the result is symmetric
    (each node sees its (n-1)/2 nearest neighbours on either side); for even n the window
    leans one way, so it is not, exactly as Jepsen's majorities-ring.
    """
    _need(nodes, 3, "majorities_ring")
    ring = list(nodes)
    if rng is not None:
        rng.shuffle(ring)
    n = len(ring)
    majority = n // 2 + 1
    everyone = frozenset(ring)
    grudge: dict[int, frozenset[int]] = {}
    for position, node in enumerate(ring):
        start = position - (majority - 1) // 2
        visible = frozenset(ring[(start + k) % n] for k in range(majority))
        grudge[node] = everyone - visible
    return grudge


def bridge(nodes: Sequence[int]) -> dict[int, frozenset[int]]:
    """Two halves with one node (the first of the larger half) seeing and seen by everyone."""
    _need(nodes, 3, "bridge")
    first, second = bisect(list(nodes))
    hub = second[0]
    grudge = complete_grudge([first, second])
    del grudge[hub]
    return {node: dropped - {hub} for node, dropped in grudge.items()}


GRUDGES = ("halves", "isolate-one", "majorities-ring", "bridge")


def named(kind: str, nodes: Sequence[int], rng: random.Random) -> dict[int, frozenset[int]]:
    """The grudge called `kind` (one of GRUDGES) over `nodes`, its choices drawn from `rng`."""
    if kind == "halves":
        return halves(nodes, rng)
    if kind == "isolate-one":
        return isolate(rng.choice(list(nodes)), nodes)
    if kind == "majorities-ring":
        return majorities_ring(nodes, rng)
    if kind == "bridge":
        order = list(nodes)
        rng.shuffle(order)
        return bridge(order)
    raise GrudgeError(f"unknown grudge {kind!r}; known: {', '.join(GRUDGES)}")


def cut_off(grudge: Grudge, nodes: Sequence[int]) -> list[int]:
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
            for neighbour in adjacent[frontier.pop()]:
                if neighbour not in group:
                    group.add(neighbour)
                    frontier.append(neighbour)
        groups.append(group)
        left -= group
    main = max(groups, key=lambda g: (len(g), -min(g)))
    return sorted(set(nodes) - main)


def normalize(grudge: Grudge, nodes: Iterable[int]) -> dict[int, frozenset[int]]:
    """Check a hand-written grudge against the cluster's node ids and drop empty entries."""
    known = set(nodes)
    result: dict[int, frozenset[int]] = {}
    for node, dropped in grudge.items():
        unknown = ({node} | set(dropped)) - known
        if unknown:
            raise GrudgeError(
                f"grudge names node(s) {sorted(unknown)} that are not in the cluster "
                f"(nodes: {sorted(known)})"
            )
        if node in dropped:
            raise GrudgeError(f"node {node} cannot hold a grudge against itself")
        if dropped:
            result[node] = frozenset(dropped)
    return result


def components(grudge: Grudge, nodes: Iterable[int]) -> list[frozenset[int]]:
    """Groups of nodes that can all reach each other both ways (for reports and checkers)."""
    remaining = sorted(set(nodes))
    groups: list[frozenset[int]] = []
    while remaining:
        seed = remaining.pop(0)
        group = {seed}
        for other in list(remaining):
            if all(
                other not in grudge.get(member, ()) and member not in grudge.get(other, ())
                for member in group
            ):
                group.add(other)
                remaining.remove(other)
        groups.append(frozenset(group))
    return groups


@dataclass(frozen=True)
class Partition:
    """A named partition, as a nemesis records it in a history."""

    kind: str  # "halves" | "isolate" | "majorities-ring" | "bridge" | "custom"
    grudge: Mapping[int, frozenset[int]]

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "grudge": {str(k): sorted(v) for k, v in sorted(self.grudge.items())},
        }


LOCAL_PARTITION_REFUSAL = (
    "the local backend cannot apply network partitions: each node has one Toxiproxy proxy per "
    "port, which sees no source address, so it cannot drop traffic from some peers and not "
    "others (and a node's outgoing calls would still get answers); run this test with "
    "--backend docker, which applies grudges with iptables inside each container"
)


def _need(nodes: Sequence[int], count: int, what: str) -> None:
    if len(set(nodes)) != len(nodes):
        raise GrudgeError(f"{what}: node ids repeat in {list(nodes)}")
    if len(nodes) < count:
        raise GrudgeError(f"{what} needs at least {count} nodes, got {len(nodes)}")
