"""Grudges as iptables rules inside containers (the docker backend's partitions).

A grudge maps a node to the nodes whose traffic it drops (see harness.faults.partition):
for every node `a` and every `b` in grudge[a], packets *from b to a* are dropped. Traffic
between two nodes takes one of two paths, and the rules cover both:

- direct (container IP to container IP): dropped at a's INPUT by b's source address, and
  at b's OUTPUT by a's destination address (so b's sends fail fast at its own end too);
- through the cluster's Toxiproxy (nodes advertise proxy endpoints, so gossip and client
  calls between nodes go b -> proxy -> a): the proxy hides b's address from a, so b's
  requests are dropped at b's OUTPUT by the destination of a's proxy listeners, and b's
  replies relayed to a are dropped at a's INPUT by the *source port* of b's proxy listeners.

The rules live in two chains of our own, jumped to from INPUT and OUTPUT, so a heal flushes
exactly them and nothing else (Docker's embedded DNS keeps its own rules in the same netns).
A new ruleset is loaded with one `iptables-restore --noflush` per container: atomic, and one
exec per node however large the grudge.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import HarnessError

IN_CHAIN = "HSC-GRUDGE-IN"
OUT_CHAIN = "HSC-GRUDGE-OUT"


class IptablesError(HarnessError):
    """iptables failed inside a container; the message carries its output."""


@dataclass(frozen=True)
class NodeAddress:
    """How one node is reached: its container IP and the proxy ports fronting it."""

    ip: str
    proxy_ports: tuple[int, ...] = ()  # listen ports on the proxy that lead to this node


@dataclass(frozen=True)
class Ruleset:
    """The rules of one node's two chains (iptables rule specs without `-A <chain>`)."""

    inbound: tuple[str, ...] = ()
    outbound: tuple[str, ...] = ()

    def restore_input(self) -> str:
        """`iptables-restore --noflush` input: declaring a chain (`:NAME - [0:0]`) creates or
        flushes it, and the other chains of the table are left alone."""
        lines = ["*filter", f":{IN_CHAIN} - [0:0]", f":{OUT_CHAIN} - [0:0]"]
        lines += [f"-A {IN_CHAIN} {rule}" for rule in self.inbound]
        lines += [f"-A {OUT_CHAIN} {rule}" for rule in self.outbound]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def grudge_rules(
    grudge: Mapping[int, frozenset[int]],
    addresses: Mapping[int, NodeAddress],
    proxy_ip: str | None = None,
) -> dict[int, Ruleset]:
    """The ruleset of every node in `addresses` (empty for nodes the grudge leaves alone)."""
    inbound: dict[int, list[str]] = {n: [] for n in addresses}
    outbound: dict[int, list[str]] = {n: [] for n in addresses}
    for a, dropped in sorted(grudge.items()):
        for b in sorted(dropped):
            if a not in addresses or b not in addresses:
                missing = a if a not in addresses else b
                raise IptablesError(f"grudge names node {missing}, which has no address")
            inbound[a].append(f"-s {addresses[b].ip} -j DROP")
            outbound[b].append(f"-d {addresses[a].ip} -j DROP")
            if proxy_ip is not None:
                for port in addresses[a].proxy_ports:
                    outbound[b].append(f"-d {proxy_ip} -p tcp --dport {port} -j DROP")
                for port in addresses[b].proxy_ports:
                    inbound[a].append(f"-s {proxy_ip} -p tcp --sport {port} -j DROP")
    return {
        n: Ruleset(tuple(_unique(inbound[n])), tuple(_unique(outbound[n]))) for n in addresses
    }


def _unique(rules: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(rules))


def load_script(ruleset: Ruleset) -> list[str]:
    """argv that loads `ruleset` inside a container and hooks the chains in (idempotently)."""
    hooks = " && ".join(
        f"(iptables -C {parent} -j {chain} 2>/dev/null || iptables -I {parent} 1 -j {chain})"
        for parent, chain in (("INPUT", IN_CHAIN), ("OUTPUT", OUT_CHAIN))
    )
    script = (
        f"printf %s {shlex.quote(ruleset.restore_input())} | iptables-restore --noflush"
        f" && {hooks}"
    )
    return ["sh", "-c", script]


# Runs argv in a container, returning (exit status, combined output).
Exec = Callable[[Sequence[str]], tuple[int, str]]


def apply(exec_in: Exec, where: str, ruleset: Ruleset) -> None:
    """Load one node's ruleset, replacing what its chains held before."""
    status, output = exec_in(load_script(ruleset))
    if status != 0:
        raise IptablesError(
            f"loading partition rules in {where} failed (exit {status}): {output.strip()}; "
            "the container needs the NET_ADMIN capability and iptables in its image"
        )


def read_rules(exec_in: Exec, where: str) -> list[str]:
    """The rules currently in our chains (`iptables -S` lines), for evidence in reports."""
    status, output = exec_in(["sh", "-c", f"iptables -S {IN_CHAIN}; iptables -S {OUT_CHAIN}"])
    if status != 0:
        raise IptablesError(f"reading partition rules in {where} failed: {output.strip()}")
    return [line for line in output.splitlines() if line.startswith("-A ")]


class IptablesNet:
    """Partitions by iptables over each node's host (`Host.exec`): the `Net` of every
    runtime whose hosts have iptables and the right to use it (docker with NET_ADMIN, ssh
    hosts as root).

    A host that cannot run anything now (a stopped container: `HostDown`) gets the grudge
    in force when it comes back (`reload`). The grudge replaces the previous one on every
    node, including nodes it no longer names.
    """

    def __init__(
        self,
        hosts: Mapping[int, Any],
        addresses: Mapping[int, NodeAddress],
        proxy_ip: str | None,
    ) -> None:
        self.hosts = dict(hosts)  # node id -> Host
        self.addresses = dict(addresses)
        self.proxy_ip = proxy_ip
        self.state = PartitionState()

    def _exec(self, node_id: int) -> Exec:
        from harness.runtimes import exec_retrying

        # Loading a whole ruleset and reading the rules are both safe to ask again.
        host = self.hosts[node_id]
        return lambda argv: exec_retrying(host, argv, 30.0)

    def _load(self, node_id: int, ruleset: Ruleset) -> bool:
        from harness.runtimes import HostDown

        try:
            apply(self._exec(node_id), self.hosts[node_id].name, ruleset)
        except HostDown:
            return False
        return True

    def _rules(self) -> dict[int, Ruleset]:
        return grudge_rules(self.state.grudge, self.addresses, self.proxy_ip)

    def partition(self, grudge: Mapping[int, frozenset[int]]) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        self.state = PartitionState(dict(grudge), set())
        rules = self._rules()
        nodes = sorted(self.addresses)
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(nodes)))) as pool:
            outcomes = list(pool.map(lambda n: self._load(n, rules[n]), nodes))
        loaded = dict(zip(nodes, outcomes, strict=True))
        self.state.pending = {n for n, ok in loaded.items() if not ok}
        return {
            "grudge": {str(k): sorted(v) for k, v in sorted(grudge.items())},
            "rules": {
                str(n): {"in": list(r.inbound), "out": list(r.outbound)}
                for n, r in sorted(rules.items())
                if r.inbound or r.outbound
            },
        }

    def reload(self, node_id: int) -> None:
        if self.state.grudge and node_id in self.addresses:
            if self._load(node_id, self._rules()[node_id]):
                self.state.pending.discard(node_id)

    def heal(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.state = PartitionState()
        nodes = sorted(self.addresses)
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(nodes)))) as pool:
            list(pool.map(lambda n: self._load(n, Ruleset()), nodes))

    def rules_in(self, node_id: int) -> list[str]:
        """The rules now in node n's chains (evidence for reports)."""
        return read_rules(self._exec(node_id), self.hosts[node_id].name)


@dataclass
class PartitionState:
    """The grudge in force and which nodes still need it loaded (stopped or paused ones)."""

    grudge: dict[int, frozenset[int]] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
