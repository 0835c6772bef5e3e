"""A real 3-node reference cluster on the local backend, Toxiproxy in front of every port.

Faults are observed from outside, the way a client sees them: through each node's proxied
client URL, with Echo and DescribeCluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
from cluster_probes import call_echo, describe_cluster, echo_fails, wait_until
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness import HarnessError
from harness.cluster import Cluster, UnsupportedFault
from harness.faults.partition import isolate
from harness.faults.toxiproxy import connect_toxiproxy
from harness.history import History
from harness.nemesis import Nemesis

pytestmark = [pytest.mark.slow, pytest.mark.cluster(nodes=3, base_port=19010, toxiproxy=True,
                                                    toxiproxy_url=None, backend="local",
                                                    target="reference", defects=())]


def test_every_node_is_behind_its_own_proxies(cluster: Cluster) -> None:
    proxies = requests.get(f"{cluster.toxiproxy_url}/proxies", timeout=5).json()
    for node in cluster.nodes:
        assert node.client.host == f"127.0.1.{10 + node.id}", node
        assert node.direct_client.host == f"127.0.0.{10 + node.id}", node
        for port_name, listen, direct in (("client", node.client, node.direct_client),
                                          ("gossip", node.gossip, node.direct_gossip)):
            info = cluster.proxy(node.id, port_name)
            assert proxies[info.name]["listen"] == str(listen)
            assert proxies[info.name]["upstream"] == str(direct)
            assert proxies[info.name]["enabled"] is True
        assert call_echo(cluster.client_url(node.id)) == "ping"
    # Every node advertises its proxy, so DescribeCluster lists proxy addresses only.
    wait_until(
        "all 3 nodes in DescribeCluster via node 1",
        lambda: len(describe_cluster(cluster.client_url(1)).serverNodes) == 3,
    )
    hosts = sorted(n.host for n in describe_cluster(cluster.client_url(2)).serverNodes)
    assert hosts == ["127.0.1.11", "127.0.1.12", "127.0.1.13"]


def test_kill_then_restart_is_seen_through_the_url(cluster: Cluster) -> None:
    url = cluster.client_url(2)
    old_pid = cluster.node(2).pid
    cluster.kill(2)
    assert cluster.node(2).state == "killed"
    wait_until("node 2 stops answering Echo", lambda: echo_fails(url) is not None, 10)
    assert call_echo(cluster.client_url(1)) == "ping"  # the others still serve
    cluster.restart(2)
    assert cluster.node(2).pid != old_pid and cluster.node(2).state == "running"
    wait_until("node 2 answers Echo again", lambda: call_echo(url) == "ping", 10)


def test_pause_then_resume_is_seen_through_the_url(cluster: Cluster) -> None:
    url = cluster.client_url(3)
    cluster.pause(3)
    try:
        assert echo_fails(url) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        cluster.resume(3)
    wait_until("node 3 answers Echo after resume", lambda: call_echo(url) == "ping", 10)


def test_disabled_client_proxy_cuts_the_node_off(cluster: Cluster) -> None:
    url = cluster.client_url(1)
    client_proxy = cluster.proxy(1, "client").name
    connect_toxiproxy(cluster.toxiproxy_url or "").set_enabled(client_proxy, False)
    try:
        assert echo_fails(url) == grpc.StatusCode.UNAVAILABLE
        assert call_echo(cluster.nodes[0].direct_client.host + ":"
                         + str(cluster.nodes[0].direct_client.port)) == "ping"
    finally:
        cluster.reset_proxies()
    wait_until("node 1 answers through its proxy after the reset",
               lambda: call_echo(url) == "ping")


def test_store_kill_and_restart(cluster: Cluster) -> None:
    cluster.kill_store()
    cluster.restart_store()
    wait_until("node 1 answers after the store restart",
               lambda: call_echo(cluster.client_url(1)) == "ping")


def test_local_partition_is_refused_with_the_way_out(cluster: Cluster) -> None:
    with pytest.raises(UnsupportedFault, match="--backend docker"):
        cluster.partition(isolate(1, [1, 2, 3]))


def test_logs_are_per_process_files(cluster: Cluster) -> None:
    logs = cluster.logs()
    assert {"store", "node-1", "node-2", "node-3", "toxiproxy"} <= set(logs)
    for name in ("node-1", "node-2", "node-3"):
        assert "Server is started on port 19" in logs[name].read_text(), name
    assert all(path.parent.name == cluster.spec.name for path in logs.values())


def test_token_cluster_initialises_and_refuses_anonymous_calls(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # The init steps must carry the token, or a token cluster would never become ready.
    secured = cluster_factory(nodes=1, base_port=19080, toxiproxy=False,
                              tokens=("hstream:hstream",))
    assert echo_fails(secured.client_url(1)) == grpc.StatusCode.UNAUTHENTICATED
    target = secured.client_url(1).removeprefix("hstream://")
    with grpc.insecure_channel(target) as channel:
        reply = HStreamApi_pb2_grpc.HStreamApiStub(channel).Echo(
            HStreamApi_pb2.EchoRequest(msg="ping"), timeout=2,
            metadata=(("authorization", "Basic hstream:hstream"),),
        )
    assert reply.msg == "ping"


def test_late_node_waits_then_joins_the_running_cluster(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    grown = cluster_factory(nodes=2, late_nodes=1, base_port=19090)
    late = grown.node(3)
    # laid out, proxied and reserved, but not started: no client URL, nothing running
    assert late.state == "pending" and late.pid is None
    assert grown.client_urls() == [grown.client_url(1), grown.client_url(2)]
    assert ("node-3", "client") in grown.proxies
    assert echo_fails(grown.client_url(3)) is not None
    assert {n.id for n in describe_cluster(grown.client_url(1)).serverNodes} == {1, 2}

    history = History(tmp_path / "history.jsonl")
    nemesis = Nemesis(grown, history)
    healed = nemesis.heal()  # healing does not start (or count as up) a node never joined
    assert healed is not None and healed.value["up"] == [] and late.state == "pending"
    joined = nemesis.join(3)
    assert joined is not None and (joined.f, joined.value["up"]) == ("join", [3])
    history.close()
    assert late.state == "running" and late.pid is not None
    assert call_echo(grown.client_url(3)) == "ping"
    for n in (1, 2, 3):
        wait_until(
            f"node {n} lists all three servers",
            lambda n=n: {m.id for m in describe_cluster(grown.client_url(n)).serverNodes}
            == {1, 2, 3},
        )
    with pytest.raises(HarnessError, match="node 3 is not a late node waiting to join"):
        grown.join(3)
    with pytest.raises(HarnessError, match="node 1 is not a late node"):
        grown.join(1)
