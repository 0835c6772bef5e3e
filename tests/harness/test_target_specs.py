"""Process specs of both targets, checked against the known-good setups flag by flag.

The hstream target cannot run here (no image can be pulled), so these tests pin what the
docker backend would start: the exact flags of the HStreamDB quick-start / hstreamdb_erl CI
compose, the shared store volume, the ready lines and the hadmin init sequence.
"""

from __future__ import annotations

import re
import shlex

import pytest

from harness.targets import Endpoint, Placement, TargetError, target_for
from harness.targets.hstream import CONFIG_PATH, HStreamTarget
from harness.topology import ClusterSpec

IMAGE = "hstreamdb/hstream:v0.20.0"


def docker_like_placements(spec: ClusterSpec, proxied: bool) -> dict[str, Placement]:
    """What a container backend gives: bind 0.0.0.0, one IP per container, proxies on
    their own IPs with the same ports."""
    target = target_for(spec)
    placements = {}
    for index, layout in enumerate(target.layout(spec)):
        ip = f"172.30.0.{10 + index}"
        proxy_ip = f"172.30.1.{10 + index}"
        advertised = {
            name: Endpoint(proxy_ip if proxied and name in layout.proxied else ip, port)
            for name, port in layout.ports.items()
        }
        placements[layout.name] = Placement("0.0.0.0", ip, advertised, dict(layout.volumes))
    return placements


def flags(argv: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            if argv[i] == "--param":
                found[f"--param {value}"] = None
            else:
                found[argv[i]] = value
            i += 2 if value is not None else 1
        else:
            i += 1
    return found


@pytest.fixture
def hstream_spec() -> ClusterSpec:
    return ClusterSpec(nodes=3, target=f"hstream:{IMAGE}", backend="docker")


def test_hstream_layout_order_ports_volumes(hstream_spec: ClusterSpec) -> None:
    layout = HStreamTarget(hstream_spec).layout(hstream_spec)
    assert [p.name for p in layout] == ["zookeeper", "hstore", "node-1", "node-2", "node-3"]
    assert layout[0].ports == {"zk": 2181}
    assert layout[1].ports == {"store-admin": 6440}
    assert all(p.ports == {"client": 6570, "gossip": 6571} for p in layout[2:])
    # ld-dev-cluster writes logdevice.conf into the volume every server reads it from
    assert layout[1].volumes == {"store-data": "/data/store"}
    assert all(p.volumes == {"store-data": "/data/store"} for p in layout[2:])
    assert all(p.proxied == ("client", "gossip") for p in layout[2:])


def test_hstream_store_and_zookeeper_specs(hstream_spec: ClusterSpec) -> None:
    placements = docker_like_placements(hstream_spec, proxied=True)
    zk, store, *_ = HStreamTarget(hstream_spec).processes(hstream_spec, placements)
    assert zk.image == "zookeeper:3.8" and zk.argv == ()
    assert store.image == IMAGE
    assert list(store.argv) == [
        "/usr/local/bin/ld-dev-cluster", "--root", "/data/store", "--use-tcp",
        "--tcp-host", "172.30.0.11", "--user-admin-port", "6440",
        "--param", "enable-dscp-reflection=false", "--no-interactive",
    ]
    assert re.search(store.ready_log, "... LogDevice Cluster running ...")


def test_hstream_server_flags_match_known_good(hstream_spec: ClusterSpec) -> None:
    placements = docker_like_placements(hstream_spec, proxied=True)
    servers = HStreamTarget(hstream_spec).processes(hstream_spec, placements)[2:]
    for i, server in enumerate(servers, start=1):
        assert server.image == IMAGE and server.argv[:2] == ("bash", "-c")
        script = server.argv[2]
        exec_part = shlex.split(script.split("exec ", 1)[1])
        assert exec_part[0] == "/usr/local/bin/hstream-server"
        seen = flags(exec_part)
        proxy_ip = f"172.30.1.{11 + i}"
        assert seen == {
            "--config-path": CONFIG_PATH,
            "--bind-address": "0.0.0.0",
            "--port": "6570",
            "--internal-port": "6571",
            "--server-id": str(i),
            "--seed-nodes": "172.30.1.12:6571,172.30.1.13:6571,172.30.1.14:6571",
            "--advertised-address": proxy_ip,
            "--gossip-address": proxy_ip,
            "--metastore-uri": "zk://172.30.0.10:2181",
            "--store-config": "/data/store/logdevice.conf",
            "--store-admin-host": "172.30.0.11",
            "--store-admin-port": "6440",
            "--log-level": "debug",
        }
        # the config file the server insists on carries the four required keys
        for key in (f"id: {i}", f"advertised-address: {proxy_ip}",
                    "metastore-uri: zk://172.30.0.10:2181", "seed-nodes: "):
            assert key in script, key
        assert re.search(server.ready_log, "Server is started on port 6570")
        assert server.volumes == {"store-data": "/data/store"}


def test_hstream_init_then_status_on_every_node(hstream_spec: ClusterSpec) -> None:
    placements = docker_like_placements(hstream_spec, proxied=True)
    steps = HStreamTarget(hstream_spec).init_steps(hstream_spec, placements)
    assert [s.argv for s in steps] == [
        ("hadmin", "server", "--host", "172.30.0.12", "--port", "6570", "init"),
        ("hadmin", "server", "--host", "172.30.0.12", "--port", "6570", "status"),
        ("hadmin", "server", "--host", "172.30.0.13", "--port", "6570", "status"),
        ("hadmin", "server", "--host", "172.30.0.14", "--port", "6570", "status"),
    ]
    assert all(s.image == IMAGE for s in steps)
    status = steps[1].expect
    table = "| 1 | Running | ... |\n| 2 | Running | ... |\n| 3 | {} | ... |"
    assert re.search(status, table.format("Running"))
    assert not re.search(status, table.format("Starting"))


def test_hstream_refuses_a_proxy_on_another_port(hstream_spec: ClusterSpec) -> None:
    placements = docker_like_placements(hstream_spec, proxied=True)
    node = placements["node-2"]
    placements["node-2"] = Placement(
        node.bind_host, node.host,
        {**node.advertised, "client": Endpoint("172.30.1.13", 16570)}, node.volumes,
    )
    with pytest.raises(TargetError, match="node-2: hstream-server advertises its listening"):
        HStreamTarget(hstream_spec).processes(hstream_spec, placements)


def test_hstream_refuses_gossip_overrides() -> None:
    spec = ClusterSpec(target=f"hstream:{IMAGE}", gossip={"probe_interval_ms": 100})
    with pytest.raises(TargetError, match="only by the reference target"):
        target_for(spec)


def test_reference_node_flags() -> None:
    spec = ClusterSpec(nodes=2, base_port=19000, defects=("no-refute",),
                       gossip={"probe_interval_ms": 300})
    placements = docker_like_placements(spec, proxied=True)
    store, node1, node2 = target_for(spec).processes(spec, placements)
    assert flags(list(store.argv)) == {
        "--data-dir": "/data/store", "--port": "19002", "--bind-address": "0.0.0.0",
    }
    assert store.argv[:3] == ("python", "-m", "refserver.store")
    assert flags(list(node2.argv)) == {
        "--server-id": "2",
        "--port": "19000",
        "--internal-port": "19001",
        "--bind-address": "0.0.0.0",
        "--advertised-address": "172.30.1.12",
        "--advertised-port": "19000",
        "--gossip-address": "172.30.1.12",
        "--advertised-gossip-port": "19001",
        "--seed-nodes": "172.30.1.11:19001,172.30.1.12:19001",
        "--store": "172.30.1.10:19002",
        "--defect": "no-refute",
        "--probe-interval-ms": "300",
    }
    assert re.search(node1.ready_log, "Server is started on port 19000")
    steps = target_for(spec).init_steps(spec, placements)
    assert steps[0].argv[-1] == "server init" and "172.30.0.11:19000" in steps[0].argv
    assert [s.argv[-1] for s in steps[1:]] == ["server ready", "server ready"]


def test_late_nodes_are_deferred_and_join_through_the_first_nodes() -> None:
    for spec in (
        ClusterSpec(nodes=2, late_nodes=2, base_port=19000),
        ClusterSpec(nodes=2, late_nodes=2, target=f"hstream:{IMAGE}", backend="docker"),
    ):
        target = target_for(spec)
        placements = docker_like_placements(spec, proxied=True)
        nodes = [p for p in target.processes(spec, placements) if p.role == "node"]
        assert [(p.node_id, p.deferred) for p in nodes] == [
            (1, False), (2, False), (3, True), (4, True)
        ]
        assert [layout.deferred for layout in target.layout(spec) if layout.role == "node"] == [
            False, False, True, True
        ]
        seeds = {str(placements[f"node-{i}"].advertised["gossip"]) for i in (1, 2)}
        for proc in nodes:
            argv = list(proc.argv) if spec.target == "reference" else shlex.split(proc.argv[2])
            listed = next(argv[i + 1] for i, a in enumerate(argv) if a == "--seed-nodes")
            assert set(listed.split(",")) == seeds, (proc.name, listed)
        # bring-up initialises and waits for the first nodes only
        steps = " ".join(" ".join(step.argv) for step in target.init_steps(spec, placements))
        assert placements["node-2"].host in steps
        assert placements["node-3"].host not in steps and placements["node-4"].host not in steps


def test_unknown_defect_lists_the_known_ones() -> None:
    with pytest.raises(TargetError, match=r"unknown defect nope; .*never-confirm"):
        target_for(ClusterSpec(defects=("nope",)))
