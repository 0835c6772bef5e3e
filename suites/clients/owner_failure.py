"""Waiting, with an honest bound, for the cluster to confirm a failed owner dead.

A client can only move off a failed owner once lookups name another node, and lookups move
only when membership has confirmed the owner dead (§3: ownership hashes over the alive
members). So the failover checks wait for that event — every survivor's DescribeCluster
showing the owner as Dead — instead of sleeping, and bound the wait by the SWIM timings the
cluster runs with plus a named scheduling slack for a loaded machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
from google.protobuf.empty_pb2 import Empty
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials
from harness.checkers.membership import swim_bounds
from harness.targets.settings import TargetSettings

# Faster than the real defaults (2 s probes, 4x suspicion) so a failover test takes seconds,
# slow enough that a loaded 2-core machine does not produce false suspicions (the round-trip
# timeout is half a period). Only targets that take timings from outside use them.
FAST_GOSSIP = {
    "probe_interval_ms": 1000,
    "roundtrip_timeout_ms": 500,
    "gossip_interval_ms": 500,
    "suspicion_mult": 3,
    "reconnect_interval_ms": 2000,
}
# What a machine with load 5-8 on 2 cores adds to any protocol bound: process wake-ups,
# gRPC calls queued behind other clusters, Python start-up of drivers.
SCHEDULING_SLACK_S = 15.0
DESCRIBE_TIMEOUT_S = 3.0


def confirmation_bound_s(settings: TargetSettings, nodes: int) -> float:
    """Failure -> every member has it dead, for what the target runs with (see
    swim_bounds), plus the scheduling slack."""
    gossip = settings.gossip
    bounds = swim_bounds(
        gossip.probe_interval_s,
        nodes,
        gossip_interval_s=gossip.gossip_interval_s,
        suspicion_periods=gossip.suspicion_periods(nodes),
    )
    return bounds["agreement_bound_s"] + SCHEDULING_SLACK_S


def node_states(endpoint: str) -> dict[int, str] | str:
    """{node id: NodeState name} as `endpoint` reports it, or the error text."""
    with credentials.channel(endpoint) as channel:
        try:
            answer = api_grpc.HStreamApiStub(channel).DescribeCluster(
                Empty(), timeout=DESCRIBE_TIMEOUT_S
            )
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return {s.node.id: api.NodeState.Name(s.state) for s in answer.serverNodesStatus}


@dataclass
class DeathWatch:
    """Polls the survivors until all of them report `node` Dead."""

    node: int
    survivors: dict[int, str]  # id -> client endpoint
    bound_s: float
    started: float = field(default_factory=time.monotonic)
    views: dict[int, dict[int, str] | str] = field(default_factory=dict)
    confirmed_after_s: float | None = None

    def confirmed(self) -> bool:
        if self.confirmed_after_s is not None:
            return True
        self.views = {n: node_states(endpoint) for n, endpoint in self.survivors.items()}
        if all(isinstance(v, dict) and v.get(self.node) == "Dead" for v in self.views.values()):
            self.confirmed_after_s = round(time.monotonic() - self.started, 2)
            return True
        return False

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.started > self.bound_s

    def wait(self) -> float:
        while not self.confirmed():
            assert not self.expired, self.failure()
            time.sleep(0.2)
        assert self.confirmed_after_s is not None
        return self.confirmed_after_s

    def failure(self) -> str:
        return (
            f"node {self.node} not confirmed dead by every survivor within {self.bound_s:.1f} s "
            f"(gossip bound + {SCHEDULING_SLACK_S:.0f} s slack); last views {self.views}"
        )
