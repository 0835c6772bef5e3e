"""Which alive node owns a resource: rendezvous (highest random weight) hashing.

Every node computes the same owner from the same alive set, and when a node leaves only
the resources it owned move (each to the node with the next-highest weight), which is
what lookups need once membership has converged. The real server's jump hash over a
Haskell string hash is not reproducible and no client computes it, so any deterministic
function of (key, alive set) is compatible; this one is explainable in one line:
weight(key, node) = MD5(f"{key}#{node.id}") as a big-endian integer, highest weight wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from refserver.membership import NodeAddress


class NoAliveNode(ValueError):
    pass


def weight(key: str, node_id: int) -> int:
    return int.from_bytes(hashlib.md5(f"{key}#{node_id}".encode()).digest(), "big")


def owner(key: str, alive: Sequence[NodeAddress]) -> NodeAddress:
    """The node that owns `key` among `alive` (ties, never seen in practice, go to the
    higher id so the choice stays independent of the order of `alive`)."""
    if not alive:
        raise NoAliveNode(f"no alive node to own {key!r}: the membership view is empty")
    return max(alive, key=lambda node: (weight(key, node.id), node.id))
