"""Store faults: kill -9 the store every server writes to, or restart it with its data.

Servers stay members meanwhile (their gossip is untouched), so these make nobody down.
"""

from __future__ import annotations

from harness.nemesis.base import Context, Family, Undo
from harness.nemesis.faults import FaultInstance


class Store(Family):
    name = "store"
    needs = ("store",)
    kinds = ("kill-store", "restart-store")

    def __init__(self) -> None:
        self.killed = False

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        kind = instance.fault.kind
        if kind == "kill-store" and action == "start":
            ctx.cluster.kill_store()
            self.killed = True
        elif kind == "restart-store" and action == "start":
            ctx.cluster.restart_store()
        elif kind == "kill-store" and self.killed:
            ctx.cluster.restart_store()
            self.killed = False
        return set(), set()

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        if self.killed:
            undo.attempt("restart the store", ctx.cluster.restart_store)
            self.killed = False
        undo.done()
