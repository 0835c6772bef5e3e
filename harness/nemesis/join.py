"""Join: a late node (`ClusterSpec.late_nodes`) starts for the first time, a brand-new member.

It comes up without having gone down, which the membership checker reads as a join. A
joined node stays: there is nothing to stop or undo. A join drawn for a schedule
(`FAULTS["join"]`, no node named) starts the lowest late node still waiting.
"""

from __future__ import annotations

from harness.nemesis.base import Context, Family, NemesisError
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
        nodes = list(instance.nodes) or [self._next_late_node(ctx)]
        for n in nodes:
            ctx.cluster.join(n)
        return set(), set(nodes)

    @staticmethod
    def _next_late_node(ctx: Context) -> int:
        """A join drawn for a schedule names no node: the lowest late node still waiting."""
        pending = sorted(n.id for n in ctx.cluster.nodes if n.state == "pending")
        if not pending:
            raise NemesisError(
                "join: every late node has joined already; give the cluster more late_nodes "
                "or fewer joins"
            )
        return pending[0]
