"""Join: a late node (`ClusterSpec.late_nodes`) starts for the first time, a brand-new member.

It comes up without having gone down, which the membership checker reads as a join. A
joined node stays: there is nothing to stop or undo.
"""

from __future__ import annotations

from harness.nemesis.base import Context, Family
from harness.nemesis.faults import FaultInstance


class Join(Family):
    name = "join"
    needs = ("join",)
    kinds = ("join",)

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        if action != "start":
            return set(), set()
        for n in instance.nodes:
            ctx.cluster.join(n)
        return set(), set(instance.nodes)
