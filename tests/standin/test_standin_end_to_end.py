"""The hstream target end to end in containers, on the stand-in image (docker/hstream-standin).

`hstream:hstream-conformance/hstream-standin:v0.20.3` runs exactly what the target would run
on the real image: ZooKeeper from the image's own command, `ld-dev-cluster` waited on for
"LogDevice Cluster running", three `hstream-server`s with the real flags and the YAML config
the target writes, `hadmin server init` / `server ready` and a lookup on every node, all
behind Toxiproxy; then a node killed and restarted through the cluster handle (the target's
before_restart / after_start steps), and a token cluster whose steps go through
admin_command with the base64 token while an anonymous call is cancelled (hs-grpc's refusal
without TLS, which the stand-in's reference server shows under profile hstream-0.20).

The image is built (or found up to date) by a session fixture, so CI builds it; bring-up
and restart times are printed (run with -s) and recorded as junit properties.
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import images, wire
from harness.cluster import Cluster, start_cluster
from harness.runtimes.docker import IMAGE_ENV, LABEL_CLUSTER
from harness.targets.hstream import CONFIG_PATH, ZOOKEEPER_IMAGE_ENV, config_token, node_ports
from harness.topology import ClusterSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = images.STANDIN_IMAGE
TARGET = f"hstream:{IMAGE}"
TOKEN = "standin:secret"
# With Toxiproxy, the hstream target's nodes listen (and their proxies) on base_port + 10k.
BASE_PORT = 57000


def timed_progress(lines: list[tuple[float, str]]) -> Callable[[str], None]:
    began = time.monotonic()

    def progress(line: str) -> None:
        lines.append((time.monotonic() - began, line))
        print(f"[{time.monotonic() - began:6.1f}s] {line}", file=sys.stderr, flush=True)

    return progress


@pytest.fixture(scope="session")
def standin_image() -> str:
    """The stand-in image, built on the current sources (skipped when it already is)."""
    try:
        images.build(["hstream-standin"], progress=lambda line: None)
    except images.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    return IMAGE


@pytest.fixture(scope="module")
def standin_env(standin_image: str) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        # The stand-in is also the ZooKeeper image: run with no command, it starts Debian's
        # ZooKeeper, as the target runs its ZooKeeper image.
        patch.setenv(ZOOKEEPER_IMAGE_ENV, standin_image)
        yield


def start(spec: ClusterSpec, figures: dict[str, float]) -> Cluster:
    lines: list[tuple[float, str]] = []
    began = time.monotonic()
    cluster = start_cluster(spec, progress=timed_progress(lines))
    figures["bring_up_s"] = round(time.monotonic() - began, 1)
    for at, line in lines:
        for name in ("zookeeper", "hstore", "node-1"):
            if line.startswith(f"  {name} ready in "):
                figures[f"{name}_ready_at_s"] = round(at, 1)
        if line.startswith("init: server init"):
            figures["init_steps_began_at_s"] = round(at, 1)
    return cluster


@pytest.fixture(scope="class")
def figures() -> dict[str, float]:
    return {}


# Class-scoped, so the plain cluster is gone before the token cluster starts: two at once
# would be ten containers (two JVMs among them) on a small machine.
@pytest.fixture(scope="class")
def cluster(standin_env: None, figures: dict[str, float]) -> Iterator[Cluster]:
    spec = ClusterSpec(nodes=3, backend="docker", target=TARGET, base_port=BASE_PORT)
    assert spec.toxiproxy, "the default spec puts Toxiproxy in front of the nodes"
    with start(spec, figures) as running:
        yield running


# How long a node may take to see its peers running, by gossip, once the cluster is up.
GOSSIP_CONVERGENCE_S = 30.0


def describe(endpoint: str, metadata: Any = None) -> api.DescribeClusterResponse:
    return wire.stub(endpoint).DescribeCluster(empty_pb2.Empty(), timeout=5,
                                               metadata=metadata)


def running_ids(response: api.DescribeClusterResponse) -> list[int]:
    return sorted(s.node.id for s in response.serverNodesStatus
                  if s.state == api.NodeState.Value("Running"))


def endpoint(cluster: Cluster, n: int) -> str:
    return cluster.client_url(n).removeprefix("hstream://")


def containers_of(cluster: Cluster) -> dict[str, Any]:
    engine = docker.from_env()
    found = engine.containers.list(all=True,
                                   filters={"label": f"{LABEL_CLUSTER}={cluster.spec.label}"})
    return {c.labels["org.hstream-conformance.process"]: c for c in found}


def run_in(cluster: Cluster, process: str, argv: list[str]) -> tuple[int, str]:
    """argv inside the process's own container, on the stand-in image: Cluster.exec runs
    commands in a helper of the harness's image that shares only the network, which has
    neither hadmin nor the node's files."""
    done = containers_of(cluster)[process].exec_run(["timeout", "30", *argv])
    return int(done.exit_code), done.output.decode(errors="replace")


def started_line(cluster: Cluster, node_id: int) -> str:
    return f"Server is started on port {node_ports(cluster.spec, node_id)[0]}"


def append_and_read(hstream: api_grpc.HStreamApiStub, payloads: list[bytes],
                    stream: str | None = None) -> tuple[str, list[bytes]]:
    """Appends `payloads` to a (new) one-shard stream at its shard's owner, then reads the
    shard from the start through a reader at the reader's owner."""
    if stream is None:
        stream = f"standin_{uuid.uuid4().hex[:10]}"
        hstream.CreateStream(api.Stream(streamName=stream, replicationFactor=1, shardCount=1),
                             timeout=10)
    shard = hstream.ListShards(api.ListShardsRequest(streamName=stream), timeout=10).shards[0]
    if payloads:
        owner = hstream.LookupShard(api.LookupShardRequest(shardId=shard.shardId), timeout=10)
        appended = wire.stub(wire.endpoint_of(owner.serverNode)).Append(
            api.AppendRequest(streamName=stream, shardId=shard.shardId,
                              records=wire.batch([wire.raw_record(p) for p in payloads])),
            timeout=10)
        assert len(appended.recordIds) == len(payloads), appended
    reader_id = f"r_{uuid.uuid4().hex[:10]}"
    owner = hstream.LookupShardReader(api.LookupShardReaderRequest(readerId=reader_id),
                                      timeout=10)
    reader_node = wire.stub(wire.endpoint_of(owner.serverNode))
    reader_node.CreateShardReader(api.CreateShardReaderRequest(
        streamName=stream, shardId=shard.shardId, readerId=reader_id, timeout=200,
        shardOffset=api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST)), timeout=10)
    got: list[bytes] = []
    for _ in range(10):
        read = reader_node.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=100),
                                     timeout=10)
        if not read.receivedRecords and got:
            break
        for received in read.receivedRecords:
            got += [record.payload for record in wire.unbatch(received.record)]
    reader_node.DeleteShardReader(api.DeleteShardReaderRequest(readerId=reader_id), timeout=10)
    return stream, got


@pytest.fixture(scope="class")
def written(cluster: Cluster) -> tuple[str, list[bytes]]:
    payloads = [f"record-{i}".encode() for i in range(20)]
    stream, got = append_and_read(wire.stub(endpoint(cluster, 1)), payloads)
    assert got == payloads
    return stream, payloads


@pytest.fixture(scope="class")
def token_cluster(standin_env: None) -> Iterator[tuple[Cluster, dict[str, float]]]:
    figures: dict[str, float] = {}
    spec = ClusterSpec(nodes=2, backend="docker", target=TARGET, base_port=BASE_PORT,
                       tokens=(TOKEN,), name="tokens")
    with start(spec, figures) as running:
        yield running, figures


class TestThreeNodesBehindToxiproxy:
    def test_bring_up_runs_the_real_launch_sequence_on_the_standin(
        self, cluster: Cluster, figures: dict[str, float],
        record_testsuite_property: Callable[[str, Any], None],
    ) -> None:
        for key, value in figures.items():
            record_testsuite_property(key, value)
        print(f"\nbring-up figures: {figures}", file=sys.stderr)
        containers = containers_of(cluster)
        assert sorted(containers) == ["hstore", "node-1", "node-2", "node-3", "toxiproxy",
                                      "zookeeper"], sorted(containers)
        for name in ("hstore", "node-1", "zookeeper"):
            assert IMAGE in containers[name].image.tags, (name, containers[name].image.tags)
        # ZooKeeper is Debian's, started by the image's own command, and answers 4lw commands.
        srvr = "exec 3<>/dev/tcp/127.0.0.1/2181; printf srvr >&3; cat <&3"
        code, out = run_in(cluster, "zookeeper", ["bash", "-c", srvr])
        assert code == 0 and "Mode: standalone" in out, out
        # The store printed the real readiness line; the servers waited on ZooKeeper, read the
        # store's address from the config ld-dev-cluster wrote, and run under profile hstream-0.20.
        store_log = containers["hstore"].logs().decode(errors="replace")
        assert "LogDevice Cluster running" in store_log, store_log[-2000:]
        node_log = containers["node-2"].logs().decode(errors="replace")
        assert "answers (mode standalone)" in node_log, node_log[-2000:]
        assert "--profile hstream-0.20" in node_log, node_log[-2000:]
        assert started_line(cluster, 2) in node_log, node_log[-2000:]
        # The flags the target passed are the real ones, as the config file is its.
        code, config = run_in(cluster, "node-2", ["cat", CONFIG_PATH])
        assert code == 0 and "hserver:" in config and "id: 2" in config, config

    def test_describe_cluster_lists_three_running_nodes_at_their_proxies(
        self, cluster: Cluster
    ) -> None:
        response = describe(endpoint(cluster, 1))
        assert response.protocolVersion == "0.1.0"
        assert running_ids(response) == [1, 2, 3], response
        advertised = {n.id: f"{n.host}:{n.port}" for n in response.serverNodes}
        assert advertised == {node.id: str(node.client) for node in cluster.nodes}, (
            "every node advertises its proxy endpoint (it listens on the proxy's port)")

    def test_hadmin_in_the_image_formats_status_and_ready(self, cluster: Cluster) -> None:
        direct = cluster.node(1).direct_client
        argv = ["hadmin", "server", "--host", direct.host, "--port", str(direct.port)]
        code, status = run_in(cluster, "node-2", [*argv, "status"])
        assert code == 0, status
        assert "| Node ID |" in status and "Running" in status, status
        code, ready = run_in(cluster, "node-2", [*argv, "ready"])
        assert code == 0 and ready.strip() == "Cluster is ready", ready

    def test_append_then_read_through_the_proxies(self, written: tuple[str, list[bytes]]) -> None:
        stream, payloads = written
        assert stream.startswith("standin_") and len(payloads) == 20

    def test_kill_and_restart_node_2_through_the_cluster_handle(
        self, cluster: Cluster, written: tuple[str, list[bytes]], figures: dict[str, float],
        record_testsuite_property: Callable[[str, Any], None],
    ) -> None:
        cluster.kill(2)
        began = time.monotonic()
        # before_restart waits until the peers dropped node 2 (else DuplicateNodeId refuses
        # it); after_start asks node 2 itself `server ready` and a lookup.
        cluster.restart(2)
        figures["restart_s"] = round(time.monotonic() - began, 1)
        record_testsuite_property("restart_s", figures["restart_s"])
        print(f"\nrestart of node 2 (before_restart + start + after_start): "
              f"{figures['restart_s']}s", file=sys.stderr)
        assert cluster.node(2).state == "running"
        deadline = time.monotonic() + GOSSIP_CONVERGENCE_S
        while running_ids(describe(endpoint(cluster, 1))) != [1, 2, 3]:
            assert time.monotonic() < deadline, describe(endpoint(cluster, 1))
            time.sleep(0.5)
        assert running_ids(describe(endpoint(cluster, 2))) == [1, 2, 3]
        node_log = containers_of(cluster)["node-2"].logs().decode(errors="replace")
        assert node_log.count(started_line(cluster, 2)) == 2, node_log[-2000:]
        # What was written before the restart is still there, read through the restarted node.
        stream, payloads = written
        _, got = append_and_read(wire.stub(endpoint(cluster, 2)), [], stream=stream)
        assert got == payloads


class TestTokens:
    def test_token_cluster_comes_up_and_cancels_anonymous_calls(
        self, token_cluster: tuple[Cluster, dict[str, float]],
        record_testsuite_property: Callable[[str, Any], None],
    ) -> None:
        cluster, figures = token_cluster
        for key, value in figures.items():
            record_testsuite_property(f"tokens_{key}", value)
        print(f"\ntoken cluster bring-up figures: {figures}", file=sys.stderr)
        # The init, ready and lookup steps passed (start_cluster returned), sending the base64
        # value of the token verbatim; the config holds that value.
        code, config = run_in(cluster, "node-1", ["cat", CONFIG_PATH])
        assert code == 0 and config_token(TOKEN) in config and TOKEN not in config, config
        with pytest.raises(grpc.RpcError) as refused:
            describe(endpoint(cluster, 1))
        assert refused.value.code() == grpc.StatusCode.CANCELLED, refused.value
        # The raw token (not its base64) is refused as well: the comparison is byte for byte.
        with pytest.raises(grpc.RpcError) as raw:
            describe(endpoint(cluster, 1), metadata=(("authorization", f"Basic {TOKEN}"),))
        assert raw.value.code() == grpc.StatusCode.CANCELLED, raw.value
        header = (("authorization", "Basic " + base64.b64encode(TOKEN.encode()).decode()),)
        # The token is taken: node 2 answers, and learns node 1 by gossip (node 2 came up
        # 0.1 s after node 1 in a loaded CI run and still saw only itself when first asked).
        deadline = time.monotonic() + GOSSIP_CONVERGENCE_S
        while running_ids(describe(endpoint(cluster, 2), metadata=header)) != [1, 2]:
            assert time.monotonic() < deadline, \
                f"node 2 did not see nodes 1 and 2 running within {GOSSIP_CONVERGENCE_S:.0f}s: " \
                f"{describe(endpoint(cluster, 2), metadata=header)}"
            time.sleep(0.5)
        # hadmin sends no credentials, so on a token cluster it is refused: why the target's
        # steps go through admin_command --token there.
        direct = cluster.node(1).direct_client
        code, out = run_in(cluster, "node-1", ["hadmin", "server", "--host", direct.host,
                                               "--port", str(direct.port), "ready"])
        assert code != 0 and "CANCELLED" in out, out


def test_each_container_runs_the_image_the_target_names(
    standin_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ZOOKEEPER_IMAGE_ENV, standin_image)
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    spec = ClusterSpec(nodes=1, backend="docker", target=TARGET, base_port=BASE_PORT,
                       toxiproxy=False, name="images")
    with start_cluster(spec, progress=lambda line: None) as running:
        containers = containers_of(running)
        for name in ("zookeeper", "hstore", "node-1"):
            assert IMAGE in containers[name].image.tags, (name, containers[name].image.tags)
