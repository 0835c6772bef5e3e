"""A real 3-node reference cluster on the docker backend, Toxiproxy in its own container.

Every fault is observed from outside the node it hits: through the proxied client URLs from
the host (Echo, DescribeCluster), and for partitions from inside the *peers'* containers,
which try TCP connections to the isolated node's direct and proxied gossip endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import docker
import grpc
import pytest
import requests
from cluster_probes import call_echo, describe_cluster, echo_fails, wait_until

from harness import images
from harness.cluster import Cluster
from harness.faults.partition import isolate
from harness.faults.toxiproxy import connect_toxiproxy
from harness.runtimes import EXEC_ATTEMPTS, ExecOutputLost, exec_retrying
from harness.runtimes.docker import LABEL_CLUSTER
from harness.targets import Endpoint

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.cluster(
        nodes=3, backend="docker", target="reference", toxiproxy=True, toxiproxy_url=None,
        defects=(), gossip={"probe_interval_ms": 400, "roundtrip_timeout_ms": 150},
    ),
]


@pytest.fixture(scope="module", autouse=True)
def refserver_image() -> Iterator[None]:
    """The image must hold the current sources; the build is skipped when it already does."""
    try:
        images.build(["refserver"], progress=lambda line: None)
    except images.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield


def alive_ids(cluster: Cluster, n: int) -> list[int]:
    return sorted(node.id for node in describe_cluster(cluster.client_url(n)).serverNodes)


def tcp_from(cluster: Cluster, source: str, endpoint: Endpoint) -> str:
    """Tries a TCP connect from inside `source`'s container: 'ok' or the error's name."""
    code, out = cluster.exec(source, [
        "python", "-c",
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{endpoint.host}', {endpoint.port}), timeout=1.5)\n"
        "    print('ok')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n",
    ])
    assert code == 0, out
    return out.strip()


def test_nodes_run_in_labelled_containers_behind_the_proxy_container(
    cluster: Cluster,
) -> None:
    engine = docker.from_env()
    containers = engine.containers.list(filters={"label": f"{LABEL_CLUSTER}={cluster.spec.label}"})
    names = sorted(c.labels["org.hstream-conformance.process"] for c in containers)
    assert names == ["node-1", "node-2", "node-3", "store", "toxiproxy"], names
    # The harness reaches the Toxiproxy container by its address on the cluster's network.
    assert cluster.toxiproxy_url and cluster.toxiproxy_url.endswith(":8474")
    proxy_ip = cluster.toxiproxy_url.split("//", 1)[1].rsplit(":", 1)[0]
    proxies = requests.get(f"{cluster.toxiproxy_url}/proxies", timeout=5).json()
    for node in cluster.nodes:
        assert node.client.host == proxy_ip and node.direct_client.host != proxy_ip, node
        info = cluster.proxy(node.id, "gossip")
        assert proxies[info.name]["upstream"] == str(node.direct_gossip)
        assert call_echo(cluster.client_url(node.id)) == "ping"
    wait_until("all 3 nodes in DescribeCluster via node 1",
               lambda: alive_ids(cluster, 1) == [1, 2, 3])
    hosts = {n.host for n in describe_cluster(cluster.client_url(2)).serverNodes}
    assert hosts == {proxy_ip}, f"nodes must advertise their proxies, saw {hosts}"


def test_kill_then_restart_keeps_container_and_address(cluster: Cluster) -> None:
    url = cluster.client_url(2)
    before = cluster.node(2).container_id
    cluster.kill(2)
    assert cluster.node(2).state == "killed"
    assert docker.from_env().containers.get(before).status == "exited"
    wait_until("node 2 stops answering Echo", lambda: echo_fails(url) is not None, 10)
    assert call_echo(cluster.client_url(1)) == "ping"
    cluster.restart(2)
    assert cluster.node(2).container_id == before and cluster.node(2).state == "running"
    wait_until("node 2 answers Echo again", lambda: call_echo(url) == "ping", 15)
    wait_until("node 2 back in node 1's view", lambda: 2 in alive_ids(cluster, 1), 30)


def test_pause_then_resume(cluster: Cluster) -> None:
    url = cluster.client_url(3)
    cluster.pause(3)
    try:
        assert docker.from_env().containers.get(cluster.node(3).container_id).status == "paused"
        assert echo_fails(url) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        cluster.resume(3)
    wait_until("node 3 answers Echo after resume", lambda: call_echo(url) == "ping", 10)


def test_isolated_node_is_unreachable_by_its_peers_until_heal(cluster: Cluster) -> None:
    wait_until("a converged cluster before the partition",
               lambda: alive_ids(cluster, 2) == [1, 2, 3], 30)
    one = cluster.node(1)
    assert tcp_from(cluster, "node-2", one.direct_gossip) == "ok"
    cluster.partition(isolate(1, [1, 2, 3]))
    try:
        for peer in ("node-2", "node-3"):
            for endpoint in (one.direct_gossip, one.gossip):  # direct, and via its proxy
                seen = tcp_from(cluster, peer, endpoint)
                assert seen != "ok", f"{peer} still reaches node-1 at {endpoint} while isolated"
        # The majority still talk to each other, directly and through the proxy.
        assert tcp_from(cluster, "node-2", cluster.node(3).direct_gossip) == "ok"
        assert tcp_from(cluster, "node-3", cluster.node(2).gossip) == "ok"
        # Membership, as a client of node 2 sees it, loses node 1.
        wait_until("node 2's DescribeCluster drops the isolated node 1",
                   lambda: 1 not in alive_ids(cluster, 2), 30)
    finally:
        cluster.heal()
    assert cluster.partition_rules(1) == [] and cluster.partition_rules(2) == []
    for peer in ("node-2", "node-3"):
        assert tcp_from(cluster, peer, one.direct_gossip) == "ok"
        assert tcp_from(cluster, peer, one.gossip) == "ok"
    wait_until("node 1 back in node 2's view after heal",
               lambda: alive_ids(cluster, 2) == [1, 2, 3], 60)


def test_partition_of_a_killed_node_is_loaded_when_it_restarts(cluster: Cluster) -> None:
    cluster.kill(3)
    cluster.partition({3: frozenset({1})})
    try:
        cluster.restart(3)
        rules = cluster.partition_rules(3)
        assert any(cluster.node(1).direct_client.host in rule for rule in rules), rules
    finally:
        cluster.heal()
    assert cluster.partition_rules(3) == []


def test_partition_reaches_a_paused_node(cluster: Cluster) -> None:
    # A paused container cannot exec; the rules go in through its network namespace.
    cluster.pause(3)
    try:
        cluster.partition({3: frozenset({2})})
    finally:
        cluster.resume(3)
    try:
        rules = cluster.partition_rules(3)
        assert any(cluster.node(2).direct_client.host in rule for rule in rules), rules
        assert tcp_from(cluster, "node-2", cluster.node(3).direct_gossip) != "ok"
    finally:
        cluster.heal()
    assert tcp_from(cluster, "node-2", cluster.node(3).direct_gossip) == "ok"


# Kills the shell docker exec started (the parent of `timeout`, the parent of this shell):
# the exec ends before the end line that says its output came back whole.
KILL_EXEC_SHELL = "kill -9 $(cut -d' ' -f4 /proc/$PPID/stat)"


def test_exec_gives_back_the_commands_own_output_and_status(cluster: Cluster) -> None:
    assert cluster.exec("node-1", ["echo", "hi"]) == (0, "hi\n")
    code, out = cluster.exec("node-1", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert code == 3 and sorted(out.split("\n")) == ["", "err", "out"], out
    assert cluster.exec("node-1", ["printf", "no newline"]) == (0, "no newline")
    # A paused container cannot exec: the command runs in a helper sharing its network.
    cluster.pause(3)
    try:
        assert cluster.exec("node-3", ["sh", "-c", "echo frozen; exit 4"]) == (4, "frozen\n")
    finally:
        cluster.resume(3)


def test_an_exec_whose_output_did_not_come_back_whole_is_told_from_an_empty_one(
    cluster: Cluster,
) -> None:
    assert cluster.exec("node-1", ["true"]) == (0, "")
    with pytest.raises(ExecOutputLost, match="node-1.*did not come back whole"):
        cluster.exec("node-1", ["sh", "-c", f"echo lost; {KILL_EXEC_SHELL}"])
    # An idempotent command is asked again: here the first run loses its output.
    flag = "/tmp/exec-lost-once"
    host = cluster.processes["node-1"].host
    assert exec_retrying(host, ["sh", "-c", f"if [ -e {flag} ]; then echo second; "
                                            f"else touch {flag}; {KILL_EXEC_SHELL}; fi"]) \
        == (0, "second\n")
    # One that never comes back whole gives up after EXEC_ATTEMPTS runs.
    count = "/tmp/exec-lost-always"
    with pytest.raises(ExecOutputLost):
        exec_retrying(host, ["sh", "-c", f"echo . >> {count}; {KILL_EXEC_SHELL}"])
    assert cluster.exec("node-1", ["wc", "-l", count])[1].split()[0] == str(EXEC_ATTEMPTS)


def test_reset_proxies_reenables_a_disabled_proxy(cluster: Cluster) -> None:
    url = cluster.client_url(1)
    client_proxy = cluster.proxy(1, "client").name
    connect_toxiproxy(cluster.toxiproxy_url or "").set_enabled(client_proxy, False)
    try:
        assert echo_fails(url) == grpc.StatusCode.UNAVAILABLE
        assert call_echo(str(cluster.node(1).direct_client)) == "ping"
    finally:
        cluster.reset_proxies()
    wait_until("node 1 answers through its proxy after the reset",
               lambda: call_echo(url) == "ping")


def test_logs_are_copied_per_container(cluster: Cluster) -> None:
    logs = cluster.logs()
    assert {"store", "node-1", "node-2", "node-3", "toxiproxy"} <= set(logs)
    for name in ("node-1", "node-2", "node-3"):
        assert "Server is started on port" in logs[name].read_text(), name
    assert all(path.parent.name == cluster.spec.name for path in logs.values())
    assert all(cluster.spec.session in str(path) for path in logs.values())


def test_late_node_gets_its_container_when_it_joins(
    cluster_factory: Callable[..., Cluster],
) -> None:
    grown = cluster_factory(nodes=2, late_nodes=1, backend="docker", toxiproxy=True,
                            toxiproxy_url=None)
    assert grown.node(3).state == "pending" and grown.node(3).container_id is None
    # a grudge naming the late node waits for its container, then applies at the join
    grown.partition({3: frozenset({1})})
    try:
        grown.join(3)
        assert grown.node(3).container_id is not None
        rules = grown.partition_rules(3)
        assert any(grown.node(1).direct_client.host in rule for rule in rules), rules
    finally:
        grown.heal()
    wait_until("every node lists the newcomer", lambda: all(
        alive_ids(grown, n) == [1, 2, 3] for n in (1, 2, 3)), 60)
