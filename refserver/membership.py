"""What the API layer needs to know about cluster membership.

The gossip layer (refserver.gossip) implements `Membership`; the API layer (DescribeCluster,
lookups, ownership checks, reassignment on death) only reads it through this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, order=True)
class NodeAddress:
    id: int
    host: str  # advertised client address (what DescribeCluster and lookups return)
    port: int  # advertised client port
    gossip_host: str
    gossip_port: int


class MemberState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True)
class Member:
    node: NodeAddress
    state: MemberState
    incarnation: int


class Membership(Protocol):
    @property
    def self_node(self) -> NodeAddress: ...

    def members(self) -> dict[int, Member]:
        """Every member this node knows of, itself included, in any state."""
        ...

    def alive(self) -> list[NodeAddress]:
        """Alive members (suspects excluded), itself included, sorted by id."""
        ...

    def is_ready(self) -> bool:
        """True once the cluster is initialised (after `server init` for several seeds)."""
        ...

    def subscribe(self, callback: Callable[[Member], None]) -> None:
        """Call `callback(member)` after every state change this node applies."""
        ...
