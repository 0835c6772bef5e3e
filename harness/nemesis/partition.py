"""Network partitions: a grudge applied by the runtime (iptables where it has them).

The grudge is built in harness.faults.partition; one grudge holds at a time (a new one
replaces the last), and its cut-off nodes are down until it heals.
"""

from __future__ import annotations

from harness.nemesis.base import Context, Family, Undo
from harness.nemesis.faults import FaultInstance


class Partition(Family):
    name = "partition"
    needs = ("partition",)
    kinds = ("partition",)

    def __init__(self) -> None:
        self.active: FaultInstance | None = None

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        if action == "start":
            ctx.cluster.partition(dict(instance.grudge or {}))
            self.active = instance
            return set(instance.down), set()
        ctx.cluster.heal()
        self.active = None
        return set(), set(instance.down)

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        if self.active is not None:
            undo.attempt("heal the partition", ctx.cluster.heal)
            self.active = None
        undo.done()

    def held_down(self) -> set[int]:
        return set(self.active.down) if self.active is not None else set()
