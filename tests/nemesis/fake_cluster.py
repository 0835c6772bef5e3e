"""A stand-in for the cluster's fault primitives and for Toxiproxy, recording what was
called, so the nemesis' dispatch is unit-tested without processes (the same faults on real
processes: test_nemesis_on_cluster.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.faults.toxiproxy import ToxiproxyError


@dataclass
class FakeNode:
    id: int
    state: str = "running"


@dataclass(frozen=True)
class FakeProxy:
    name: str


class FakeCluster:
    """Records every fault primitive called; `refusals` and `broken` say what it lacks."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        refusals: dict[str, str] | None = None,
        broken: tuple[str, ...] = (),
        pending: tuple[int, ...] = (),
    ) -> None:
        self.nodes = [FakeNode(n, "pending" if n in pending else "running") for n in
                      range(1, nodes + 1)]
        self.refusals = refusals or {}
        self.broken = broken
        self.calls: list[tuple[Any, ...]] = []
        self.toxiproxy_url = "http://toxiproxy.invalid"
        self.proxies = {
            (f"node-{n.id}", port): FakeProxy(f"node-{n.id}-{port}")
            for n in self.nodes for port in ("client", "gossip")
        } | {("store", "store"): FakeProxy("store-store")}

    def refusal(self, means: str) -> str | None:
        return self.refusals.get(means)

    def proxy(self, n: int, port: str = "client") -> FakeProxy:
        return self.proxies[(f"node-{n}", port)]

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.broken:
            raise RuntimeError(f"{name} failed on purpose")

    def kill(self, n: int) -> None:
        self._call("kill", n)

    def pause(self, n: int) -> None:
        self._call("pause", n)

    def resume(self, n: int) -> None:
        self._call("resume", n)

    def restart(self, n: int) -> None:
        self._call("restart", n)

    def join(self, n: int) -> None:
        self._call("join", n)
        self.nodes[n - 1].state = "running"

    def kill_store(self) -> None:
        self._call("kill_store")

    def restart_store(self) -> None:
        self._call("restart_store")

    def partition(self, grudge: Any) -> None:
        self._call("partition", grudge)

    def heal(self) -> None:
        self._call("heal")


@dataclass
class FakeToxiproxy:
    """The part of ToxiproxyHandle the toxic family uses, as state."""

    toxics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)

    def add_toxic(self, proxy: str, type: str, attributes: dict[str, int], *, stream: str,
                  name: str, toxicity: float) -> dict[str, Any]:
        self.toxics.setdefault(proxy, {})[name] = {"type": type, "attributes": attributes}
        return {"name": name}

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        if toxic not in self.toxics.get(proxy, {}):
            raise ToxiproxyError(f"no toxic {toxic} on {proxy}: HTTP 404")
        del self.toxics[proxy][toxic]

    def proxy(self, name: str) -> dict[str, Any]:
        return {"toxics": [{"name": t} for t in self.toxics.get(name, {})]}

    def set_enabled(self, proxy: str, enabled: bool) -> dict[str, Any]:
        (self.disabled.discard if enabled else self.disabled.add)(proxy)
        return {}
