"""SWIM membership for the reference server over HStreamDB's gossip protocol.

`GossipNode` implements `refserver.membership.Membership`; `GossipConfig` holds its
settings and flags. See refserver.gossip.node for the protocol as implemented and
refserver.gossip.wire for how CliCluster reports member states.
"""

from refserver.gossip.config import BadSeedList, GossipConfig, parse_seeds
from refserver.gossip.node import GossipNode, JoinFailed
from refserver.gossip.wire import STATE_LISTENER_KEY, decode_view

__all__ = [
    "BadSeedList",
    "GossipConfig",
    "GossipNode",
    "JoinFailed",
    "STATE_LISTENER_KEY",
    "decode_view",
    "parse_seeds",
]
