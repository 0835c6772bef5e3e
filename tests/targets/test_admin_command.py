"""harness.targets.admin_command against an in-process HStreamApi: what the hstream target's
steps send and how they decide, run as the steps run them (their argv, minus `python -m`).

The fake server answers like a real v0.20.3 server where it matters: the admin results of
`hstream/src/HStream/Server/Handler/Admin.hs`, DescribeCluster with alive members in
serverNodes and the dead only in serverNodesStatus (hstream-gossip `HStream/Gossip.hs`),
LookupKey blocking while the hash ring is not ready (`common/server/.../HashRing.hs`), and
the token check of hs-grpc (`auth.hpp`: CANCELLED without TLS).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness.targets import Endpoint, Placement, target_for
from harness.targets.admin_command import main
from harness.targets.hstream import READY_OK, config_token, node_name, node_ports
from harness.topology import ClusterSpec

IMAGE = "hstreamdb/hstream:v0.20.3"
TOKEN = "hstream:hstream"


@dataclass
class FakeNode:
    node_id: int
    members: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    ready: bool = True
    lookup_delay_s: float = 0.0
    token: str | None = None  # the config value; the header must be "Basic " + it
    seen: list[dict[str, str]] = field(default_factory=list)


class Servicer(HStreamApi_pb2_grpc.HStreamApiServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def _check(self, context: Any) -> None:
        headers = dict(context.invocation_metadata())
        self.node.seen.append(headers)
        if self.node.token and headers.get("authorization") != f"Basic {self.node.token}":
            context.abort(grpc.StatusCode.CANCELLED, "Cancelled")

    def SendAdminCommand(self, request: Any, context: Any) -> Any:
        self._check(context)
        if request.command == "server ready":
            result = ({"type": "plain", "content": "Cluster is ready"} if self.node.ready
                      else {"type": "error", "content": "Cluster is not ready!"})
        else:
            result = {"type": "plain", "content": "Server successfully received init signal"}
        return HStreamApi_pb2.AdminCommandResponse(result=json.dumps(result))

    def DescribeCluster(self, request: Any, context: Any) -> Any:
        self._check(context)
        nodes = [HStreamApi_pb2.ServerNode(id=i, host="h", port=1) for i in self.node.members]
        status = [HStreamApi_pb2.ServerNodeStatus(node=n, state=HStreamApi_pb2.Running)
                  for n in nodes]
        status += [HStreamApi_pb2.ServerNodeStatus(
            node=HStreamApi_pb2.ServerNode(id=i, host="h", port=1), state=HStreamApi_pb2.Dead)
            for i in self.node.dead]
        return HStreamApi_pb2.DescribeClusterResponse(
            protocolVersion="0.1.0", serverNodes=nodes, serverNodesStatus=status)

    def LookupKey(self, request: Any, context: Any) -> Any:
        self._check(context)
        time.sleep(self.node.lookup_delay_s)
        return HStreamApi_pb2.ServerNode(id=self.node.node_id, host="172.28.0.2", port=20002)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(node: FakeNode) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        HStreamApi_pb2_grpc.add_HStreamApiServicer_to_server(Servicer(node), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def run(argv: tuple[str, ...], hosts: list[str], capsys: pytest.CaptureFixture[str]
        ) -> tuple[int, str]:
    """A step's argv (`python -m harness.targets.admin_command ...`) with its --host values
    replaced, in order, by the fake servers'."""
    assert argv[:3] == ("python", "-m", "harness.targets.admin_command")
    args = list(argv[3:])
    slots = [i + 1 for i, a in enumerate(args) if a == "--host"]
    assert len(slots) == len(hosts)
    for slot, host in zip(slots, hosts, strict=True):
        args[slot] = host
    code = main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def placements(spec: ClusterSpec) -> dict[str, Placement]:
    target = target_for(spec)
    return {layout.name: Placement("0.0.0.0", f"10.0.0.{i}", {
        name: Endpoint(f"10.0.0.{i}", port) for name, port in layout.ports.items()})
        for i, layout in enumerate(target.layout(spec), start=10)}


@pytest.fixture
def token_spec() -> ClusterSpec:
    return ClusterSpec(nodes=3, target=f"hstream:{IMAGE}", backend="docker", tokens=(TOKEN,))


def test_token_steps_send_basic_base64(serve: Any, token_spec: ClusterSpec,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    node = FakeNode(1, members=[1, 2, 3], token=config_token(TOKEN))
    host = serve(node)
    steps = target_for(token_spec).init_steps(token_spec, placements(token_spec))
    init, ready = steps[0], steps[1]
    code, out = run(init.argv, [host], capsys)
    assert code == 0 and "Server successfully received init signal" in out
    code, out = run(ready.argv, [host], capsys)
    assert code == 0 and READY_OK in out
    assert node.seen[-1]["authorization"] == "Basic aHN0cmVhbTpoc3RyZWFt"
    # The raw token is what the server refuses (CANCELLED without TLS, hs-grpc auth.hpp).
    code, out = run(("python", "-m", "harness.targets.admin_command", "--token", TOKEN,
                     "--host", "h", "server ready"), [host], capsys)
    assert code == 1 and "CANCELLED" in out


def test_ready_expectation_rejects_not_ready(serve: Any, capsys: pytest.CaptureFixture[str],
                                             token_spec: ClusterSpec) -> None:
    host = serve(FakeNode(1, ready=False, token=config_token(TOKEN)))
    ready = target_for(token_spec).init_steps(token_spec, placements(token_spec))[1]
    code, out = run(ready.argv, [host], capsys)
    assert code == 0 and "Cluster is not ready!" in out  # the RPC worked ...
    assert not re.search(ready.expect, out)  # ... but the step keeps waiting


def test_before_restart_step_waits_for_every_answering_peer(
    serve: Any, token_spec: ClusterSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = token_spec
    (step,) = target_for(spec).before_restart(spec, placements(spec), 2)
    peer1 = FakeNode(1, members=[1, 2, 3], token=config_token(TOKEN))
    peer3 = FakeNode(3, members=[1, 3], dead=[2], token=config_token(TOKEN))
    hosts = [serve(peer1), serve(peer3)]
    code, out = run(step.argv, hosts, capsys)
    assert code == 1 and f"node 2 is still a member at {hosts[0]}" in out
    peer1.members = [1, 3]  # a suspect already leaves the member list (Utils.hs getMemberList)
    code, out = run(step.argv, hosts, capsys)
    assert code == 0 and re.search(step.expect, out), out
    assert "2=Dead" in out
    # A peer that does not answer cannot refuse a join: skipped
    code, out = run(step.argv, [closed_port(), hosts[1]], capsys)
    assert code == 0 and "not answering (UNAVAILABLE" in out, out
    # A refused token is a failure, not a silent pass
    peer3.token = "other"
    code, out = run(step.argv, hosts, capsys)
    assert code == 1 and "CANCELLED" in out


def test_lookup_step_fails_while_lookups_block(serve: Any, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    spec = ClusterSpec(nodes=2, target=f"hstream:{IMAGE}", backend="docker")
    lookup = target_for(spec).init_steps(spec, placements(spec))[-1]
    node = FakeNode(2, lookup_delay_s=3.0)  # longer than the step's RPC deadline
    host = serve(node)
    code, out = run(lookup.argv, [host], capsys)
    assert code == 1 and "DEADLINE_EXCEEDED" in out
    node.lookup_delay_s = 0.0
    code, out = run(lookup.argv, [host], capsys)
    assert code == 0 and re.search(lookup.expect, out), out


def test_node_ports_are_distinct_per_node_with_toxiproxy() -> None:
    spec = ClusterSpec(nodes=3, late_nodes=2, target=f"hstream:{IMAGE}", backend="docker")
    ports = [port for i in spec.all_node_ids for port in node_ports(spec, i)]
    assert len(set(ports)) == len(ports) == 10
    assert node_name(2) == "node-2"

