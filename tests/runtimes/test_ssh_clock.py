"""Clock faults on the ssh runtime: the node's spec file lives in the cluster's directory on
its host, written and measured over SSH; a host without libfaketime is refused in one line.

The hosts are sshd containers (harness.testhosts) of their own, because one test removes
the library from its node host.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness.cluster import Cluster, UnsupportedFault, start_cluster
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis
from harness.testhosts.sshd import HostSet, running_hosts
from harness.topology import ClusterSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NODE_TOLERANCE_S = 1.0  # the node's own stamp, one gRPC call from here to the host
MEASURE_TOLERANCE_S = 0.5  # one `date` between two on the host, run over SSH


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostSet]:
    with running_hosts(1, f"clk{os.getpid()}", progress=lambda line: None) as found:
        yield found


def start(hosts: HostSet, name: str) -> Cluster:
    return start_cluster(ClusterSpec(backend="ssh", inventory=str(hosts.inventory_path),
                                     nodes=1, clock_faults=True, name=name),
                         progress=lambda line: None)


def node_clock_offset(cluster: Cluster, name: str) -> float:
    with grpc.insecure_channel(str(cluster.node(1).direct_client)) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        before = time.time()
        reply = stub.CreateStream(
            HStreamApi_pb2.Stream(streamName=name, replicationFactor=1, shardCount=1),
            timeout=10)
        after = time.time()
    return reply.creationTime.seconds + reply.creationTime.nanos / 1e9 - (before + after) / 2


def test_bump_on_an_ssh_host(hosts: HostSet, request: pytest.FixtureRequest) -> None:
    cluster = start(hosts, "sshclk")
    try:
        assert cluster.processes["node-1"].env["FAKETIME_TIMESTAMP_FILE"].startswith(
            cluster.processes["node-1"].host.dir)  # type: ignore[attr-defined]
        with History(history_path(request.node.nodeid)) as history:
            nemesis = Nemesis(cluster, history)
            try:
                done = nemesis.invoke(FAULTS["clock-bump-forward"].on(1), "start")
                assert done is not None
                assert abs(done.value["clock"]["1"]["after"]["offset"] - 30) < MEASURE_TOLERANCE_S
                assert abs(node_clock_offset(cluster, "sshclk-1") - 30) < NODE_TOLERANCE_S
                healed = nemesis.heal()
            finally:
                nemesis.teardown()
        assert healed is not None
        assert abs(healed.value["clock"]["1"]["after"]["offset"]) < MEASURE_TOLERANCE_S
        assert abs(node_clock_offset(cluster, "sshclk-2")) < NODE_TOLERANCE_S
    finally:
        cluster.stop()


def test_host_without_libfaketime_is_refused(hosts: HostSet) -> None:
    """Runs last in this module: it takes the library away from the node host."""
    subprocess.run(["docker", "exec", hosts.container("h1"), "sh", "-c",
                    "rm -f /usr/lib/*/faketime/libfaketimeMT.so.1"], check=True)
    cluster = start(hosts, "sshnolib")
    try:
        reason = cluster.refusal("clock")
        assert reason is not None and "has no libfaketime" in reason, reason
        assert "apt-get install libfaketime" in reason and "\n" not in reason
        with pytest.raises(UnsupportedFault, match="clock-offset-ahead needs clock: node-1"):
            Nemesis(cluster).invoke(FAULTS["clock-offset-ahead"].on(1), "start")
    finally:
        cluster.stop()
