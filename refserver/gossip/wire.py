"""HStreamDB's gossip wire format: ServerNode, state reports, events, and the view encoding.

`CliCluster` answers with `Cluster{members: [ServerNode]}` and ServerNode has no state
field (the real server's handler is not even implemented), so the reference server puts
each member's SWIM state in the node's `advertisedListeners` map:

    advertisedListeners["gossip-state"] = ListOfListener{listeners: [
        Listener{address: "alive" | "suspect" | "dead", port: <incarnation>}]}

`members` lists this node first, then every other member it knows of in any state,
ordered by id. `decode_view` reads that back as {id: (state, incarnation)}.
"""

from __future__ import annotations

from harness.protos import HStreamGossip_pb2, HStreamInternal_pb2
from refserver.membership import MemberState, NodeAddress

STATE_LISTENER_KEY = "gossip-state"

# Names of the two internal events of multi-seed bootstrap, spelled as the real server does
# so both can share a cluster's event stream.
EVENT_INIT = "INIT_INTERNAL_USE_ONLY"
EVENT_INITED = "INITED_INTERNAL_USE_ONLY"

# FAILED_PRECONDITION details the real server sends from SendBootstrapPing and SendJoin.
CLUSTER_READY = "Cluster is ready"
CLUSTER_INITED = "Cluster is already initialized"
CLUSTER_NOT_READY = "Node / Cluster is not ready"


def to_server_node(node: NodeAddress) -> HStreamInternal_pb2.ServerNode:
    return HStreamInternal_pb2.ServerNode(
        id=node.id,
        port=node.port,
        gossipPort=node.gossip_port,
        advertisedAddress=node.host.encode(),
        gossipAddress=node.gossip_host.encode(),
    )


def from_server_node(node: HStreamInternal_pb2.ServerNode) -> NodeAddress:
    host = node.advertisedAddress.decode(errors="replace")
    gossip_host = node.gossipAddress.decode(errors="replace") or host
    return NodeAddress(
        id=node.id,
        host=host,
        port=node.port,
        gossip_host=gossip_host,
        gossip_port=node.gossipPort,
    )


def state_message(
    kind: str, incarnation: int, reportee: NodeAddress, reporter: NodeAddress
) -> HStreamGossip_pb2.Message:
    """kind is the StateMessage oneof name: "alive", "suspect" or "confirm"."""
    report = HStreamGossip_pb2.StateReport(
        incarnation=incarnation,
        reportee=to_server_node(reportee),
        reporter=to_server_node(reporter),
    )
    return HStreamGossip_pb2.Message(state=HStreamGossip_pb2.StateMessage(**{kind: report}))


def event_message(name: str, lamport_time: int, payload: bytes) -> HStreamGossip_pb2.Message:
    return HStreamGossip_pb2.Message(
        event=HStreamGossip_pb2.EventMessage(name=name, lamportTime=lamport_time, payload=payload)
    )


def with_state(
    node: NodeAddress, state: MemberState, incarnation: int
) -> HStreamInternal_pb2.ServerNode:
    server_node = to_server_node(node)
    server_node.advertisedListeners[STATE_LISTENER_KEY].listeners.append(
        HStreamInternal_pb2.Listener(address=state.value, port=incarnation)
    )
    return server_node


def decode_view(cluster: HStreamGossip_pb2.Cluster) -> dict[int, tuple[MemberState, int]]:
    """{member id: (state, incarnation)} from a CliCluster answer of a reference node."""
    view: dict[int, tuple[MemberState, int]] = {}
    for member in cluster.members:
        listeners = member.advertisedListeners.get(STATE_LISTENER_KEY)
        if listeners is None or not listeners.listeners:
            raise ValueError(
                f"CliCluster member {member.id} carries no {STATE_LISTENER_KEY!r} listener: "
                "not a reference server, or an incompatible version"
            )
        first = listeners.listeners[0]
        view[member.id] = (MemberState(first.address), first.port)
    return view
