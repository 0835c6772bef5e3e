"""The member table and SWIM's incarnation rules, as pure state transitions.

Rules (HStreamDB's, which are SWIM's):
- Alive(i) wins if i > the known incarnation; it adds unknown members and revives dead
  ones (a restarted node comes back with a higher incarnation).
- Suspect(i) applies to an alive member if i >= its incarnation, to a suspected one only
  if i > its incarnation (a newer suspicion); never to a dead or unknown one.
- Confirm(i) applies if i >= the incarnation and the member is not already dead.
Messages about this node itself are not handled here: the node refutes them instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from refserver.membership import Member, MemberState, NodeAddress


@dataclass
class MemberRecord:
    node: NodeAddress
    state: MemberState
    incarnation: int
    since: float  # monotonic time of the last state change

    def snapshot(self) -> Member:
        return Member(node=self.node, state=self.state, incarnation=self.incarnation)


class MemberTable:
    """Every other member this node knows of (itself excluded), in any state."""

    def __init__(self) -> None:
        self._records: dict[int, MemberRecord] = {}
        # bumped on every change, like the real server's epoch (returned by SendJoin)
        self.epoch = 0

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._records

    def get(self, member_id: int) -> MemberRecord | None:
        return self._records.get(member_id)

    def records(self) -> list[MemberRecord]:
        return [self._records[k] for k in sorted(self._records)]

    def in_state(self, *states: MemberState) -> list[MemberRecord]:
        return [r for r in self.records() if r.state in states]

    def _set(self, node: NodeAddress, state: MemberState, incarnation: int) -> MemberRecord:
        record = MemberRecord(node, state, incarnation, time.monotonic())
        self._records[node.id] = record
        self.epoch += 1
        return record

    def apply_alive(self, node: NodeAddress, incarnation: int) -> MemberRecord | None:
        known = self._records.get(node.id)
        if known is not None and incarnation <= known.incarnation:
            return None
        # the winning Alive also carries the member's current addresses (a restart may move it)
        return self._set(node, MemberState.ALIVE, incarnation)

    def apply_suspect(self, member_id: int, incarnation: int) -> MemberRecord | None:
        known = self._records.get(member_id)
        if known is None:
            return None
        if known.state is MemberState.ALIVE and incarnation >= known.incarnation:
            return self._set(known.node, MemberState.SUSPECT, incarnation)
        if known.state is MemberState.SUSPECT and incarnation > known.incarnation:
            return self._set(known.node, MemberState.SUSPECT, incarnation)
        return None

    def apply_confirm(self, member_id: int, incarnation: int) -> MemberRecord | None:
        known = self._records.get(member_id)
        if known is None or known.state is MemberState.DEAD:
            return None
        if incarnation < known.incarnation:
            return None
        return self._set(known.node, MemberState.DEAD, incarnation)
