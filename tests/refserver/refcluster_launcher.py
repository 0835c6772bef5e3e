"""A tiny launcher for real reference clusters: one store process plus N `python -m
refserver` nodes, node i on its own loopback address 127.0.0.(20+i). The fixtures using it
are in conftest.py; test modules import this module by its unique name.

Node 1 is the only seed, so the cluster needs no `server init`; the others join it.
Ports come from 16000-16999 (this area's range), checked free before use. Every process
is killed at teardown, also when the test fails; logs stay in the test's tmp folder and
failure messages name them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from refserver.membership import Member, MemberState, NodeAddress

T = TypeVar("T")
PORT_RANGE = range(16000, 17000)
STORE_HOST = "127.0.0.1"
READY_SECONDS = 30.0
_taken: set[tuple[str, int]] = set()


def free_port(host: str, ports: range = PORT_RANGE) -> int:
    # Start at a pid-dependent place so two test processes rarely probe the same ports.
    span = len(ports)
    start = (os.getpid() * 7) % span
    for step in range(span):
        port = ports.start + (start + step) % span
        if (host, port) in _taken:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _taken.add((host, port))
        return port
    raise RuntimeError(f"no free port on {host} in {ports.start}-{ports.stop - 1}")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    ready_line: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, seconds: float = READY_SECONDS, occurrence: int = 1) -> None:
        assert self.process is not None
        deadline = time.monotonic() + seconds
        while self.log().count(self.ready_line) < occurrence:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} not ready (exit code {self.process.poll()}) within {seconds} s;"
                    f" expected {self.ready_line!r} in {self.log_path}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def terminate(self) -> int | None:
        self.kill(signal.SIGTERM)
        return self.process.returncode if self.process else None


@dataclass
class Node:
    server_id: int
    host: str
    port: int
    internal_port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def gossip_url(self) -> str:
        return f"{self.host}:{self.internal_port}"


@dataclass
class RefCluster:
    workdir: Path
    store: Proc
    store_port: int
    nodes: list[Node] = field(default_factory=list)

    @property
    def store_url(self) -> str:
        return f"{STORE_HOST}:{self.store_port}"

    def logs(self) -> str:
        return ", ".join(str(p.log_path) for p in [self.store, *(n.proc for n in self.nodes)])

    def stop(self) -> None:
        for node in self.nodes:
            node.proc.kill(signal.SIGTERM)
        self.store.kill(signal.SIGTERM)


def store_proc(workdir: Path, port: int, name: str = "store") -> Proc:
    return Proc(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "refserver.store",
            "--data-dir",
            str(workdir / "store-data"),
            "--port",
            str(port),
            "--bind-address",
            STORE_HOST,
        ],
        log_path=workdir / f"{name}.log",
        ready_line="Store is started on port",
    )


@contextlib.contextmanager
def running_store(workdir: Path) -> Iterator[str]:
    """A store process on a free port for the duration of the block; yields its address."""
    port = free_port(STORE_HOST)
    proc = store_proc(workdir, port)
    proc.start()
    try:
        proc.wait_ready()
        yield f"{STORE_HOST}:{port}"
    finally:
        proc.kill(signal.SIGTERM)


class SingleNodeMembership:
    """The membership of a one-node cluster: itself, alive, ready (for tests that run one
    service of a node in-process against a real store)."""

    def __init__(self, node: NodeAddress) -> None:
        self._node = node

    @property
    def self_node(self) -> NodeAddress:
        return self._node

    def members(self) -> dict[int, Member]:
        return {self._node.id: Member(self._node, MemberState.ALIVE, 0)}

    def alive(self) -> list[NodeAddress]:
        return [self._node]

    def is_ready(self) -> bool:
        return True

    def subscribe(self, callback: Callable[[Member], None]) -> None:
        pass


def node_proc(
    cluster: RefCluster,
    server_id: int,
    seed: str,
    extra: list[str],
) -> Node:
    host = f"127.0.0.{20 + server_id}"
    port, internal = free_port(host), free_port(host)
    argv = [
        sys.executable,
        "-m",
        "refserver",
        "--server-id",
        str(server_id),
        "--bind-address",
        host,
        "--port",
        str(port),
        "--internal-port",
        str(internal),
        "--seed-nodes",
        seed or f"{host}:{internal}",
        "--store",
        cluster.store_url,
        # Short gossip periods: a 3-node cluster converges in about a second.
        "--probe-interval-ms",
        "500",
        "--roundtrip-timeout-ms",
        "200",
        "--gossip-interval-ms",
        "200",
        "--join-timeout-ms",
        "15000",
        *extra,
    ]
    proc = Proc(
        f"node {server_id}",
        argv,
        cluster.workdir / f"node{server_id}.log",
        "Server is started on port",
    )
    return Node(server_id, host, port, internal, proc)


def wait_cluster_size(cluster: RefCluster, size: int, seconds: float = 20.0) -> None:
    """Until every node's DescribeCluster lists `size` nodes."""
    deadline = time.monotonic() + seconds
    seen: dict[str, int] = {}
    for node in cluster.nodes:
        with grpc.insecure_channel(node.url) as channel:
            stub = api_grpc.HStreamApiStub(channel)
            while True:
                try:
                    seen[node.url] = len(
                        stub.DescribeCluster(empty_pb2.Empty(), timeout=2).serverNodes
                    )
                except grpc.RpcError:
                    seen[node.url] = -1
                if seen[node.url] == size:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"cluster did not reach {size} nodes in {seconds} s: seen {seen}; "
                        f"logs: {cluster.logs()}"
                    )
                time.sleep(0.1)


@contextlib.contextmanager
def launch(
    workdir: Path,
    nodes: int,
    node_args: list[str] | None = None,
    store_args: list[str] | None = None,
) -> Iterator[RefCluster]:
    """Start a store and `nodes` refserver nodes; stop everything on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    store_port = free_port(STORE_HOST)
    cluster = RefCluster(workdir, store_proc(workdir, store_port), store_port)
    cluster.store.argv += store_args or []
    try:
        cluster.store.start()
        cluster.store.wait_ready()
        seed = ""
        for server_id in range(1, nodes + 1):
            node = node_proc(cluster, server_id, seed, list(node_args or []))
            cluster.nodes.append(node)
            node.proc.start()
            node.proc.wait_ready()
            seed = seed or f"{node.host}:{node.internal_port}"
        if nodes > 1:
            wait_cluster_size(cluster, nodes)
        yield cluster
    finally:
        cluster.stop()


def retry_unavailable(call: Callable[[], T], seconds: float = 10.0) -> T:
    """Run `call` until it stops answering UNAVAILABLE: after a store restart a node
    answers UNAVAILABLE until its reconnect backoff (at most 0.5 s) has run out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
