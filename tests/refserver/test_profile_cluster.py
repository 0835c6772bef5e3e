"""`--profile` on the command line, and the cluster launcher the other test_profile_*
modules use: a store process plus `python -m refserver --profile NAME` nodes, node i on
127.0.0.(50+i), every port in 53000-55999. Processes are killed at teardown; logs stay in
the test's tmp folder and failure messages name them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from refcluster_launcher import STORE_HOST, Node, Proc, store_proc
from refcluster_launcher import free_port as shared_free_port

from harness.protos import HStreamGossip_pb2_grpc

pytestmark = pytest.mark.slow

T = TypeVar("T")
PORT_RANGE = range(53000, 56000)
PROFILES = ("protocol", "hstream-0.20")
# Short periods so that a test sees a few probe rounds in a second; tests that must not
# see a probe (or a gossip round) set their own.
FAST_GOSSIP = [
    "--probe-interval-ms", "500",
    "--roundtrip-timeout-ms", "150",
    "--gossip-interval-ms", "200",
    "--join-timeout-ms", "15000",
]  # fmt: skip
# Periods long enough that no probe and no gossip round happens during a test: the node's
# probe loop, idle at start, next looks for a target a minute later.
NO_ROUNDS = ["--probe-interval-ms", "60000", "--gossip-interval-ms", "60000"]


def free_port(host: str) -> int:
    return shared_free_port(host, PORT_RANGE)


# A node of these tests is the shared launcher's node.
ProfileNode = Node


@dataclass
class ProfileCluster:
    workdir: Path
    profile: str
    store: Proc
    store_port: int
    nodes: dict[int, ProfileNode] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def logs(self) -> str:
        return ", ".join(
            str(p.log_path) for p in [self.store, *(n.proc for n in self.nodes.values())]
        )

    def node(
        self, server_id: int, seeds: str | None = None, extra: list[str] | None = None
    ) -> ProfileNode:
        """Define node `server_id` (not started). Seeds default to node 1's gossip address
        (the node's own for node 1); "{self}" in `seeds` stands for the node's own."""
        host = f"127.0.0.{50 + server_id}"
        port, internal = free_port(host), free_port(host)
        if seeds is None:
            seeds = self.nodes[1].gossip_url if 1 in self.nodes else "{self}"
        seeds = seeds.replace("{self}", f"{host}:{internal}")
        argv = [
            sys.executable, "-m", "refserver",
            "--profile", self.profile,
            "--server-id", str(server_id),
            "--bind-address", host,
            "--port", str(port),
            "--internal-port", str(internal),
            "--seed-nodes", seeds,
            "--store", f"{STORE_HOST}:{self.store_port}",
            *FAST_GOSSIP,
            *(extra or []),
        ]  # fmt: skip
        log_path = self.workdir / f"node{server_id}.log"
        node = ProfileNode(
            server_id,
            host,
            port,
            internal,
            Proc(f"node {server_id}", argv, log_path, "Server is started on port"),
        )
        self.nodes[server_id] = node
        return node

    def start(
        self, server_id: int, seeds: str | None = None, extra: list[str] | None = None
    ) -> ProfileNode:
        node = self.node(server_id, seeds, extra)
        node.proc.start()
        node.proc.wait_ready()
        return node

    def api(self, node: ProfileNode) -> api_grpc.HStreamApiStub:
        channel = grpc.insecure_channel(node.url)
        self.channels.append(channel)
        return api_grpc.HStreamApiStub(channel)

    def gossip(self, node: ProfileNode) -> HStreamGossip_pb2_grpc.HStreamGossipStub:
        channel = grpc.insecure_channel(node.gossip_url)
        self.channels.append(channel)
        return HStreamGossip_pb2_grpc.HStreamGossipStub(channel)

    def stop_nodes(self) -> None:
        for channel in self.channels:
            channel.close()
        for node in self.nodes.values():
            node.proc.kill(signal.SIGTERM)


@contextlib.contextmanager
def running_store(workdir: Path) -> Iterator[tuple[Proc, int]]:
    port = free_port(STORE_HOST)
    store = store_proc(workdir, port)
    store.start()
    try:
        store.wait_ready()
        yield store, port
    finally:
        store.kill(signal.SIGTERM)


@contextlib.contextmanager
def profile_cluster(
    workdir: Path, profile: str, store: tuple[Proc, int] | None = None
) -> Iterator[ProfileCluster]:
    """A store (or the one given, shared) and no node yet: tests start the nodes they need."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        proc, port = store or stack.enter_context(running_store(workdir))
        cluster = ProfileCluster(workdir, profile, proc, port)
        try:
            yield cluster
        finally:
            cluster.stop_nodes()


def node_states(
    stub: api_grpc.HStreamApiStub, metadata: list[tuple[str, str]] | None = None
) -> dict[int, str]:
    """DescribeCluster's serverNodesStatus as {id: state name}."""
    answer = stub.DescribeCluster(empty_pb2.Empty(), timeout=5, metadata=metadata)
    return {s.node.id: api.NodeState.Name(s.state) for s in answer.serverNodesStatus}


def wait_until(check: Callable[[], T], seconds: float, what: str, evidence: Callable[[], str]) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = check()
        except grpc.RpcError:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s; {evidence()}")
        time.sleep(0.05)


# Command line ------------------------------------------------------------------------------


def run_refserver(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refserver", *args], capture_output=True, text=True, timeout=60
    )


def test_list_profiles_prints_the_names_without_other_flags() -> None:
    result = run_refserver("--list-profiles")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hstream-0.20", "protocol"]


def test_unknown_profile_is_one_line_naming_the_known_ones() -> None:
    result = run_refserver(
        "--server-id", "1", "--store", f"{STORE_HOST}:1", "--profile", "hstream-9.9"
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("refserver: error:"), result.stderr
    for word in ("hstream-9.9", "hstream-0.20", "protocol"):
        assert word in lines[0], lines[0]


def test_hstream_profile_logs_its_switches_and_the_ignored_gossip_flags(tmp_path: Path) -> None:
    with profile_cluster(tmp_path, "hstream-0.20") as cluster:
        node = cluster.start(1)
        log = node.proc.log()
    assert "profile hstream-0.20: confirm_after_probe" in log, log
    assert "--probe-interval-ms" in log and "app/server.hs:146" in log, log
    assert "Server is started on port" in log and "waiting for cluster to get ready" in log, log
