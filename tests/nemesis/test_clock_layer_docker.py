"""Clock faults on the docker backend: the layer inside the node's container (libfaketime
from the image), its spec file written and its clock measured by `docker exec`.

The same checks as test_clock_layer.py on fewer modes: the node process stamps a new
stream with its skewed wall clock, the history records the offset measured in its
container, the other node and the monotonic clock stay true, and heal restores true time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness import images
from harness.cluster import Cluster
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.cluster(
        nodes=2, backend="docker", target="reference", toxiproxy=True, toxiproxy_url=None,
        defects=(), clock_faults=True,
    ),
]

NODE_TOLERANCE_S = 1.0  # the node's own stamp, around one gRPC call from the host
MEASURE_TOLERANCE_S = 0.5  # one `date` bracketed by two in the same container


@pytest.fixture(scope="module", autouse=True)
def refserver_image() -> Iterator[None]:
    """The image must hold the current sources; the build is skipped when it already does."""
    try:
        images.build(["refserver"], progress=lambda line: None)
    except images.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield


def node_clock_offset(cluster: Cluster, n: int, name: str) -> float:
    """Node n's wall clock minus true time, as the node itself stamps a new stream."""
    with grpc.insecure_channel(str(cluster.node(n).direct_client)) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        before = time.time()
        reply = stub.CreateStream(
            HStreamApi_pb2.Stream(streamName=name, replicationFactor=1, shardCount=1),
            timeout=10,
        )
        after = time.time()
    return reply.creationTime.seconds + reply.creationTime.nanos / 1e9 - (before + after) / 2


def test_layer_is_in_the_nodes_containers_only(cluster: Cluster) -> None:
    assert cluster.refusal("clock") is None
    for name, box in cluster.processes.items():
        assert ("LD_PRELOAD" in box.env) == (box.spec.role == "node"), name


def test_offset_and_bump_seen_in_the_container(cluster: Cluster,
                                               request: pytest.FixtureRequest) -> None:
    with History(history_path(request.node.nodeid)) as history:
        nemesis = Nemesis(cluster, history)
        try:
            with grpc.insecure_channel(str(cluster.node(1).direct_client)) as channel:
                uptime = HStreamApi_pb2_grpc.HStreamApiStub(channel).DescribeCluster(
                    empty_pb2.Empty(), timeout=10).clusterUpTime
            began = time.monotonic()
            done = nemesis.invoke(FAULTS["clock-offset-behind"].on(1), "start")
            assert done is not None and done.type == "ok"
            after = done.value["clock"]["1"]["after"]
            assert abs(after["offset"] + 30.0) < MEASURE_TOLERANCE_S, done.value
            assert abs(node_clock_offset(cluster, 1, "dclk-1") + 30.0) < NODE_TOLERANCE_S
            assert abs(node_clock_offset(cluster, 2, "dclk-2")) < NODE_TOLERANCE_S
            with grpc.insecure_channel(str(cluster.node(1).direct_client)) as channel:
                later = HStreamApi_pb2_grpc.HStreamApiStub(channel).DescribeCluster(
                    empty_pb2.Empty(), timeout=10).clusterUpTime
            assert uptime <= later <= uptime + time.monotonic() - began + 2  # monotonic true

            done = nemesis.invoke(FAULTS["clock-bump-forward"].on(1), "start")  # -30 + 30
            assert done is not None
            assert abs(done.value["clock"]["1"]["after"]["offset"]) < MEASURE_TOLERANCE_S
            nemesis.invoke(FAULTS["clock-bump-forward"].on(1), "stop")
            healed = nemesis.heal()
        finally:
            nemesis.teardown()
    assert healed is not None
    assert abs(healed.value["clock"]["1"]["after"]["offset"]) < MEASURE_TOLERANCE_S
    assert abs(node_clock_offset(cluster, 1, "dclk-3")) < NODE_TOLERANCE_S
