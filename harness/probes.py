"""Membership probes: read each node's view of the cluster, `view(node) -> {member: state}`.

The membership checker judges views, not implementations, so any gossip protocol works
behind a probe. Two are provided:

* `CliClusterProbe` asks a node's gossip port (`HStreamGossip.CliCluster`). HServer's
  ServerNode carries no state; a node that reports states puts them in
  `advertisedListeners["gossip-state"]` (address = alive|suspect|dead) — what the reference
  server does. Without that entry every listed member counts as alive and unlisted ones as
  dead.
* `DescribeClusterProbe` asks the client port (`DescribeCluster`): Running → alive, Dead →
  dead, Starting/Unavailable → suspect. HServer drops suspected members from both lists, so
  given the cluster's node ids the probe reports a known member in neither list as
  "suspect" (without them it is simply absent, which the checker reads per its `absent`).

Probes talk to a node's own listeners, never through its proxies: the observer must not be
hurt by the faults it observes. `ViewSampler` polls every running node on a thread and
records `view` ops in a history.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Protocol

import grpc
from google.protobuf.empty_pb2 import Empty
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials
from harness.cluster import Cluster, NodeHandle
from harness.history import History
from harness.protos import HStreamGossip_pb2, HStreamGossip_pb2_grpc
from harness.targets.settings import TargetSettings

STATE_LISTENER = "gossip-state"
NODE_STATES = {0: "suspect", 1: "alive", 2: "suspect", 3: "dead"}


class MembershipProbe(Protocol):
    def view(self, node: NodeHandle) -> dict[str, str]:
        """The node's view, member id (as text) → alive | suspect | dead. Raises on no answer."""
        ...


# The probes ask nodes that are killed and restarted under them. gRPC's default reconnect
# backoff (1 s growing by 1.6x per failure, up to 2 minutes) would leave a restarted node
# unasked for seconds and the checker would blame the node for the probe's late view, so
# a probe channel retries a closed port every 100 ms to 0.5 s.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class _Channels:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: str) -> grpc.Channel:
        with self._lock:
            if endpoint not in self._channels:
                self._channels[endpoint] = credentials.channel(endpoint, CHANNEL_OPTIONS)
            return self._channels[endpoint]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


class CliClusterProbe:
    def __init__(self, timeout: float = 0.5) -> None:
        self.timeout = timeout
        self._channels = _Channels()

    def view(self, node: NodeHandle) -> dict[str, str]:
        stub = HStreamGossip_pb2_grpc.HStreamGossipStub(
            self._channels.get(str(node.direct_gossip))
        )
        cluster = stub.CliCluster(HStreamGossip_pb2.Empty(), timeout=self.timeout)
        view: dict[str, str] = {}
        for member in cluster.members:
            listeners = member.advertisedListeners.get(STATE_LISTENER)
            state = listeners.listeners[0].address if listeners and listeners.listeners else ""
            view[str(member.id)] = state if state in ("alive", "suspect", "dead") else "alive"
        return view

    def close(self) -> None:
        self._channels.close()


class DescribeClusterProbe:
    """Views from DescribeCluster. `absent` is what a member of `nodes` missing from the
    answer is taken for: "suspect" where lists hold every state, "dead" where they hold
    alive members only (real HStreamDB: a suspect vanishes, hstream-gossip Utils.hs:296)."""

    def __init__(self, timeout: float = 0.5, nodes: Iterable[int | str] = (),
                 absent: str = "suspect") -> None:
        self.timeout = timeout
        self.nodes = [str(n) for n in nodes]
        self.absent = absent
        self._channels = _Channels()

    def view(self, node: NodeHandle) -> dict[str, str]:
        stub = api_grpc.HStreamApiStub(self._channels.get(str(node.direct_client)))
        described: api.DescribeClusterResponse = stub.DescribeCluster(
            Empty(), timeout=self.timeout
        )
        view = {member: self.absent for member in self.nodes}
        view.update({str(n.id): "alive" for n in described.serverNodes})
        for status in described.serverNodesStatus:
            view[str(status.node.id)] = NODE_STATES.get(status.state, "suspect")
        return view

    def close(self) -> None:
        self._channels.close()


class ViewSampler:
    """Samples every running node's view every `interval` s into `history` (f="view")."""

    def __init__(
        self, cluster: Cluster, history: History, probe: MembershipProbe, interval: float = 0.1
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.probe = probe
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for node in list(self.cluster.nodes):
                if node.state != "running":
                    continue  # a killed or paused node has no view to ask for
                try:
                    view = self.probe.view(node)
                except grpc.RpcError:
                    continue  # no answer is not a view; the checker works from answers
                self.history.record(
                    "probe", "ok", "view", {"observer": str(node.id), "view": view},
                    node=node.id,
                )
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> ViewSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        close = getattr(self.probe, "close", None)
        if close:
            close()


def probe_for(settings: TargetSettings, nodes: Iterable[int | str]) -> MembershipProbe:
    """The probe a target supports: CliCluster where its gossip service answers it (every
    member's state), else DescribeCluster read as its member lists mean it."""
    if settings.membership_probe == "cli-cluster":
        return CliClusterProbe()
    absent = "dead" if settings.member_lists == "alive-only" else "suspect"
    return DescribeClusterProbe(nodes=nodes, absent=absent)
