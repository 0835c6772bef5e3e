"""Link faults through Toxiproxy: a toxic (latency, timeout, reset_peer, ...) or the proxy
down, on the client or gossip links of chosen nodes, or on the link to the store.

Toxiproxy draws toxicity once per connection and gRPC keeps connections long, so a toxic
is always applied at toxicity 1.0: the schedule decides when, not a coin per connection.
A toxic on a node's gossip link cuts what reaches the node, not what it sends, so nobody
is down because of it (see `Fault.on`).
"""

from __future__ import annotations

from harness.cluster import UnsupportedFault
from harness.faults.toxiproxy import ToxiproxyError, ToxiproxyHandle
from harness.nemesis.base import Context, Family, Undo
from harness.nemesis.faults import FaultInstance

Applied = list[tuple[str, str | None]]  # (proxy, toxic name); None: the proxy was disabled


class Toxic(Family):
    name = "toxic"
    needs = ("toxiproxy",)
    kinds = ("toxic",)

    def __init__(self) -> None:
        self.applied: dict[tuple[str, tuple[int, ...]], Applied] = {}

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        if action == "start":
            self._start(ctx, instance)
            return set(instance.down), set()
        api = ctx.toxiproxy()
        for proxy, toxic in self.applied.pop((instance.name, instance.nodes), []):
            if toxic is None:
                api.set_enabled(proxy, True)
            else:
                _remove(api, proxy, toxic)
        return set(), set(instance.down)

    def _start(self, ctx: Context, instance: FaultInstance) -> None:
        fault = instance.fault
        api = ctx.toxiproxy()
        applied = self.applied.setdefault((instance.name, instance.nodes), [])
        for proxy in self._proxies(ctx, instance):
            if fault.toxic == "down":
                api.set_enabled(proxy, False)
                applied.append((proxy, None))
                continue
            toxic = f"nemesis-{instance.name}"
            api.add_toxic(
                proxy,
                fault.toxic or "",
                dict(fault.attributes),
                stream=fault.stream,
                name=toxic,
                toxicity=1.0,
            )
            applied.append((proxy, toxic))

    @staticmethod
    def _proxies(ctx: Context, instance: FaultInstance) -> list[str]:
        link = instance.fault.link or "client"
        if link == "store":
            names = [p.name for (_, port), p in ctx.cluster.proxies.items() if port == "store"]
            if not names:
                # A target whose store link is not ours to proxy (real HStreamDB's servers
                # reach their store by their own config) lacks this means: a refusal.
                raise UnsupportedFault(
                    f"{instance.name} needs a proxy in front of the store: this cluster has "
                    "none (the target does not proxy its store link, or toxiproxy is off)"
                )
            return names
        return [ctx.cluster.proxy(n, link).name for n in instance.nodes]

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        applied = [pair for pairs in self.applied.values() for pair in pairs]
        self.applied.clear()
        if applied:
            api = ctx.toxiproxy()
            for proxy, toxic in applied:
                if toxic is None:
                    undo.attempt(f"enable proxy {proxy}", api.set_enabled, proxy, True)
                else:
                    undo.attempt(f"remove toxic {toxic} from {proxy}", _remove, api, proxy, toxic)
        undo.done()


def _remove(api: ToxiproxyHandle, proxy: str, toxic: str) -> None:
    """Remove a toxic that may be gone already: healing a partition puts every proxy back to
    normal (`Cluster.heal`), so a toxic started before it is removed with it."""
    try:
        api.remove_toxic(proxy, toxic)
    except ToxiproxyError:
        if any(t.get("name") == toxic for t in api.proxy(proxy).get("toxics") or []):
            raise
