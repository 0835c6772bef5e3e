"""Process specs of both targets, checked against the known-good setups flag by flag.

The hstream target cannot run here (no image can be pulled), so these tests pin what the
docker backend would start, on the docker backend's own placements (a fake engine): the
exact flags of the HStreamDB quick-start / hstreamdb_erl CI compose, the shared store
volume, the ready lines, the init / ready / lookup sequence and the steps around a restart.
Each hstream rule names the HStreamDB v0.20.3 source file it mirrors (hstreamdb/hstream).
"""

from __future__ import annotations

import base64
import re
import shlex
from types import SimpleNamespace

import docker.errors
import pytest

from harness.cleanup import ClusterRecord
from harness.runtimes import docker as docker_runtime_module
from harness.runtimes.docker import DockerRuntime
from harness.targets import (
    Endpoint,
    ImageMissing,
    Placement,
    ProcessSpec,
    TargetError,
    hstream,
    target_for,
)
from harness.targets.hstream import (
    CONFIG_PATH,
    HStreamTarget,
    config_token,
    member_gone_deadline_s,
    parse_version,
    restart_ready_deadline_s,
)
from harness.topology import ClusterSpec

IMAGE = "hstreamdb/hstream:v0.20.3"


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


class _FakeDocker:
    """Just enough of a docker client for DockerRuntime.provision and .check, with no engine:
    the placements these tests check are the docker backend's own."""

    def __init__(self, present: tuple[str, ...]) -> None:
        self.present = set(present)
        self.images = SimpleNamespace(get=self._get_image, list=lambda **kw: [])
        self.networks = SimpleNamespace(
            list=lambda **kw: [], create=lambda name, **kw: SimpleNamespace(name=name))
        self.containers = SimpleNamespace(list=lambda **kw: [])
        self.volumes = SimpleNamespace(list=lambda **kw: [])

    def _get_image(self, name: str) -> object:
        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()


def docker_runtime(spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch,
                   present: tuple[str, ...] = ()) -> DockerRuntime:
    from harness.images import REFSERVER_IMAGE

    fake = _FakeDocker((REFSERVER_IMAGE, *present))
    monkeypatch.setattr(docker_runtime_module, "connect", lambda: fake)
    monkeypatch.delenv(docker_runtime_module.IMAGE_ENV, raising=False)
    return DockerRuntime(spec, lambda line: None, ClusterRecord(spec.label))


def docker_placements(spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
                      ) -> tuple[dict[str, Placement], str]:
    """The docker backend's placements (proxies on the Toxiproxy container's address) and
    the network's prefix ("172.28.0.")."""
    runtime = docker_runtime(spec, monkeypatch)
    provision = runtime.provision(target_for(spec).layout(spec))
    prefix = provision.placements["zookeeper"].host.rsplit(".", 1)[0] + "."
    return dict(provision.placements), prefix


def server_argv(proc: ProcessSpec) -> tuple[list[str], str]:
    """The hstream-server argv inside a node's `bash -c` script, and the script."""
    assert proc.argv[:2] == ("bash", "-c")
    script = proc.argv[2]
    return shlex.split(script.split("exec ", 1)[1]), script


def config_yaml(script: str) -> str:
    """The config file a node's script writes (printf '%s' '<yaml>' > path)."""
    return shlex.split(script.split("printf '%s' ", 1)[1].split(" > ", 1)[0])[0]


@pytest.fixture
def hstream_spec() -> ClusterSpec:
    return ClusterSpec(nodes=3, target=f"hstream:{IMAGE}", backend="docker")


def test_default_image_and_version() -> None:
    # Images are tagged by HStreamDB's git tags; v0.20.3 is the release these rules were
    # read from (hstream/src/HStream/Server/Config.hs and friends at v0.20.3).
    assert hstream.DEFAULT_IMAGE == "hstreamdb/hstream:v0.20.3"
    target = HStreamTarget(ClusterSpec(nodes=1))  # no image named: the default
    assert target.image == hstream.DEFAULT_IMAGE
    assert target.version == (0, 20, 3) and target.version_text == "v0.20.3"
    assert HStreamTarget(ClusterSpec(target=f"hstream:{IMAGE}")).version == (0, 20, 3)


@pytest.mark.parametrize("image, version", [
    ("hstreamdb/hstream:v0.20.3", (0, 20, 3)),
    ("hstreamdb/hstream:v0.18.0-alpha1", (0, 18, 0)),
    ("localhost:5000/hstreamdb/hstream:v0.19.0", (0, 19, 0)),
    ("hstreamdb/hstream:latest", hstream.NEWEST_KNOWN_VERSION),
    ("hstreamdb/hstream", hstream.NEWEST_KNOWN_VERSION),  # docker reads no tag as latest
    ("localhost:5000/hstream", hstream.NEWEST_KNOWN_VERSION),
    ("hstreamdb/hstream@sha256:" + "0" * 64, None),
    ("hstreamdb/hstream:dev", None),
])
def test_version_is_read_from_the_tag(image: str, version: tuple[int, int, int] | None
                                      ) -> None:
    assert parse_version(image) == version


def test_hstream_layout_order_ports_volumes(hstream_spec: ClusterSpec) -> None:
    layout = HStreamTarget(hstream_spec).layout(hstream_spec)
    assert [p.name for p in layout] == ["zookeeper", "hstore", "node-1", "node-2", "node-3"]
    assert layout[0].ports == {"zk": 2181}
    assert layout[1].ports == {"store-admin": 6440}
    # With Toxiproxy on, node k listens on its proxies' ports (see the next test).
    assert [p.ports for p in layout[2:]] == [
        {"client": 6570, "gossip": 6571},
        {"client": 6580, "gossip": 6581},
        {"client": 6590, "gossip": 6591},
    ]
    # ld-dev-cluster writes logdevice.conf into the volume every server reads it from
    assert layout[1].volumes == {"store-data": "/data/store"}
    assert all(p.volumes == {"store-data": "/data/store"} for p in layout[2:])
    assert all(p.proxied == ("client", "gossip") for p in layout[2:])
    # Without Toxiproxy: the known-good fixed ports (Configuration/Cli.hs / Config.hs
    # defaults port 6570, internal-port 6571).
    plain = hstream_spec.with_(toxiproxy=False)
    assert all(p.ports == {"client": 6570, "gossip": 6571}
               for p in HStreamTarget(plain).layout(plain)[2:])


def test_nodes_listen_on_the_ports_the_docker_backend_gives_their_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # hstream/app/server.hs (action): serverNodePort = --port, serverNodeGossipPort =
    # --internal-port, and common/hstream/HStream/Common/Types.hs answers lookups with
    # advertised-address + serverNodePort: a real server advertises only ports it listens
    # on. So a proxy endpoint is advertised by listening on its port, in the node's own
    # container; proxies on one address take their upstream's number when the numbers are
    # distinct (harness.runtimes.proxy_listen_ports), and forward to that same port.
    spec = ClusterSpec(nodes=3, late_nodes=2, target=f"hstream:{IMAGE}", backend="docker")
    target = HStreamTarget(spec)
    placements, prefix = docker_placements(spec, monkeypatch)
    toxiproxy_ip = prefix + "2"
    for layout in target.layout(spec)[2:]:
        at = placements[layout.name]
        for port_name in ("client", "gossip"):
            assert at.advertised[port_name] == Endpoint(toxiproxy_ip, layout.ports[port_name])
    # ... and the target accepts them (the old target refused every port but 6570/6571).
    nodes = [p for p in target.processes(spec, placements) if p.role == "node"]
    assert [p.ports for p in nodes] == [layout.ports for layout in target.layout(spec)[2:]]


def test_hstream_store_and_zookeeper_specs(
    hstream_spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hstream.ZOOKEEPER_IMAGE_ENV, raising=False)
    placements, prefix = docker_placements(hstream_spec, monkeypatch)
    zk, store, *_ = HStreamTarget(hstream_spec).processes(hstream_spec, placements)
    assert zk.image == hstream.ZOOKEEPER_IMAGE == "zookeeper:3.8" and zk.argv == ()
    assert store.image == IMAGE
    assert list(store.argv) == [
        "/usr/local/bin/ld-dev-cluster", "--root", "/data/store", "--use-tcp",
        "--tcp-host", prefix + "11", "--user-admin-port", "6440",
        "--param", "enable-dscp-reflection=false", "--no-interactive",
    ]
    assert re.search(store.ready_log, "... LogDevice Cluster running ...")
    # The ZooKeeper image is overridable (a stand-in image may provide ZooKeeper)
    monkeypatch.setenv(hstream.ZOOKEEPER_IMAGE_ENV, "stand-in/zookeeper:1")
    zk = HStreamTarget(hstream_spec).processes(hstream_spec, placements)[0]
    assert zk.image == "stand-in/zookeeper:1"
    zk = HStreamTarget(hstream_spec, zookeeper_image="other/zk:2").processes(
        hstream_spec, placements)[0]
    assert zk.image == "other/zk:2"


def test_hstream_server_flags_match_known_good(
    hstream_spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flags: hstream/src/HStream/Server/Configuration/Cli.hs (v0.17-v0.20); required config
    # keys: hstream/src/HStream/Server/Config.hs parseJSONToOptions (`.:` on id,
    # advertised-address, metastore-uri, seed-nodes).
    placements, prefix = docker_placements(hstream_spec, monkeypatch)
    toxiproxy_ip = prefix + "2"
    servers = HStreamTarget(hstream_spec).processes(hstream_spec, placements)[2:]
    for i, server in enumerate(servers, start=1):
        assert server.image == IMAGE
        argv, script = server_argv(server)
        assert argv[0] == "/usr/local/bin/hstream-server"
        client, gossip = 6570 + 10 * (i - 1), 6571 + 10 * (i - 1)
        assert flags(argv) == {
            "--config-path": CONFIG_PATH,
            "--bind-address": "0.0.0.0",
            "--port": str(client),
            "--internal-port": str(gossip),
            "--server-id": str(i),
            # Start.hs amIASeed: a seed finds itself by (gossip-address, internal-port)
            "--seed-nodes": f"{toxiproxy_ip}:6571,{toxiproxy_ip}:6581,{toxiproxy_ip}:6591",
            "--advertised-address": toxiproxy_ip,
            "--gossip-address": toxiproxy_ip,
            "--metastore-uri": f"zk://{prefix}10:2181",
            "--store-config": "/data/store/logdevice.conf",
            "--store-admin-host": prefix + "11",
            "--store-admin-port": "6440",
            "--log-level": "debug",
        }
        config = config_yaml(script)
        for key in (f"id: {i}", f"advertised-address: {toxiproxy_ip}",
                    f"metastore-uri: zk://{prefix}10:2181", "seed-nodes: ",
                    f"port: {client}", f"internal-port: {gossip}"):
            assert f"  {key}" in config, key
        assert "tokens" not in config
        # app/server.hs serve: "Server is started on port <port>, waiting for cluster ..."
        assert re.search(server.ready_log, f"Server is started on port {client}, waiting")
        assert server.volumes == {"store-data": "/data/store"}
        assert server.ports == {"client": client, "gossip": gossip}


def test_hstream_without_toxiproxy_advertises_the_node_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = ClusterSpec(nodes=2, target=f"hstream:{IMAGE}", backend="docker", toxiproxy=False)
    placements, prefix = docker_placements(spec, monkeypatch)
    node2 = HStreamTarget(spec).processes(spec, placements)[3]
    seen = flags(server_argv(node2)[0])
    assert (seen["--port"], seen["--internal-port"]) == ("6570", "6571")
    assert seen["--advertised-address"] == seen["--gossip-address"] == prefix + "13"
    assert seen["--seed-nodes"] == f"{prefix}12:6571,{prefix}13:6571"


def test_hstream_refuses_a_proxy_on_another_port(
    hstream_spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this cannot be expressed: an advertised port the node does not listen on (no
    # advertised-port option in Configuration/Cli.hs; app/server.hs serveListeners serves
    # every advertised listener on its own port).
    placements, _ = docker_placements(hstream_spec, monkeypatch)
    node = placements["node-2"]
    placements["node-2"] = Placement(
        node.bind_host, node.host,
        {**node.advertised, "client": Endpoint("172.30.1.13", 16570)}, node.volumes,
    )
    with pytest.raises(TargetError, match=(
            r"node-2: the backend placed its client port behind 172\.30\.1\.13:16570, but "
            r"node-2 listens on 6580 and hstream-server v0\.20\.3 can only advertise a port "
            r"it listens on")):
        HStreamTarget(hstream_spec).processes(hstream_spec, placements)


def test_tokens_are_written_as_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    # hstream/src/HStream/Server/Config.hs: `tokens` under hserver, compared verbatim with
    # the authorization header after "Basic " (hs-grpc HsGrpc/Server/Types.hsc): the
    # config holds base64 of user:password, as clients send it.
    spec = ClusterSpec(nodes=2, target=f"hstream:{IMAGE}", backend="docker",
                       tokens=("hstream:hstream", "other:secret"))
    placements, _ = docker_placements(spec, monkeypatch)
    for node in HStreamTarget(spec).processes(spec, placements)[2:]:
        config = config_yaml(server_argv(node)[1])
        assert config.endswith(
            '  tokens:\n    - "aHN0cmVhbTpoc3RyZWFt"\n    - "b3RoZXI6c2VjcmV0"\n'), config
        assert "hstream:hstream" not in config
    assert config_token("hstream:hstream") == base64.b64encode(b"hstream:hstream").decode()


@pytest.mark.parametrize("image", [
    "hstreamdb/hstream:v0.19.0", "hstreamdb/hstream:v0.20.3", "hstreamdb/hstream:latest"])
def test_tokens_from_v0_19_0(image: str) -> None:
    # Config.hs reads hserver.tokens from v0.19.0 (v0.18.4 has no such key)
    HStreamTarget(ClusterSpec(target=f"hstream:{image}", tokens=("a:b",)))


@pytest.mark.parametrize("image, named", [
    ("hstreamdb/hstream:v0.18.4", "is v0.18.4, which ignores the key"),
    ("hstreamdb/hstream:v0.17.0", "is v0.17.0, which ignores the key"),
    ("hstreamdb/hstream:dev", "names no version"),
])
def test_tokens_refused_before_v0_19_0(image: str, named: str) -> None:
    with pytest.raises(TargetError, match=f"tokens need HStreamDB v0.19.0 or newer.*{named}"):
        target_for(ClusterSpec(target=f"hstream:{image}", tokens=("a:b",)))
    # without tokens any version runs
    assert target_for(ClusterSpec(target=f"hstream:{image}")).name == "hstream"


def test_hstream_init_then_ready_then_lookups_on_every_node(
    hstream_spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    placements, prefix = docker_placements(hstream_spec, monkeypatch)
    steps = HStreamTarget(hstream_spec).init_steps(hstream_spec, placements)
    direct = {i: (prefix + str(11 + i), str(6570 + 10 * (i - 1))) for i in (1, 2, 3)}
    # hadmin server --host H --port P init|ready, straight to the node (not its proxy)
    def hadmin(i: int, command: str) -> tuple[str, ...]:
        return ("hadmin", "server", "--host", direct[i][0], "--port", direct[i][1], command)

    assert [s.argv for s in steps[:4]] == [
        hadmin(1, "init"), hadmin(1, "ready"), hadmin(2, "ready"), hadmin(3, "ready")]
    assert all(s.image == IMAGE for s in steps[:4])
    assert "status" not in " ".join(" ".join(s.argv) for s in steps)
    # Handler/Admin.hs runInit / runCheckReady texts; an error result ("Cluster is not
    # ready!") makes hadmin exit 1 (hstream-admin .../Server/Command.hs) and never matches.
    assert re.search(steps[0].expect, "Server successfully received init signal")
    for ready in steps[1:4]:
        assert re.search(ready.expect, "Cluster is ready")
        assert not re.search(ready.expect, "Error: Cluster is not ready!")
    # Lookups block 5 s after a node starts (common/server/.../HashRing.hs updateHashRing):
    # one lookup per node, with a deadline that covers the block.
    lookups = steps[4:]
    assert [s.argv[-4:] for s in lookups] == [
        ("--host", f"{h}:{p}", "--lookup-key", hstream.LOOKUP_PROBE_KEY)
        for h, p in direct.values()]
    assert all(s.argv[:3] == ("python", "-m", "harness.targets.admin_command")
               and s.image is None for s in lookups)
    assert hstream.LOOKUP_BLOCK_S == 5.0
    assert all(s.timeout_s > hstream.LOOKUP_BLOCK_S + hstream.RPC_TIMEOUT_S for s in lookups)
    assert hstream.RPC_TIMEOUT_S < hstream.LOOKUP_BLOCK_S  # an answer proves the ring ready
    assert re.search(lookups[0].expect, "node 2 at 172.28.0.2:6580")


def test_hstream_token_cluster_steps_send_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # hadmin sends no credentials (hstream-admin .../Server/Command.hs withAdminClient'):
    # on a token cluster every step is our admin_command with the base64 token.
    spec = ClusterSpec(nodes=2, target=f"hstream:{IMAGE}", backend="docker",
                       tokens=("hstream:hstream",))
    placements, prefix = docker_placements(spec, monkeypatch)
    target = HStreamTarget(spec)
    steps = [*target.init_steps(spec, placements), *target.before_restart(spec, placements, 2),
             *target.after_start(spec, placements, 2)]
    for step in steps:
        assert step.image is None, step
        assert step.argv[:3] == ("python", "-m", "harness.targets.admin_command"), step
        assert flags(list(step.argv))["--token"] == "aHN0cmVhbTpoc3RyZWFt", step
    assert steps[0].argv[-1] == "server init" and steps[1].argv[-1] == "server ready"
    assert flags(list(steps[0].argv))["--host"] == f"{prefix}12:6570"


def test_before_restart_waits_until_every_peer_dropped_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # hstream-gossip Server/Handlers.hs sendJoinCore: a join of an id a peer holds alive is
    # refused (DuplicateNodeId) and the node exits (Start.hs joinCluster'); DescribeCluster
    # lists alive members only (hstream-gossip HStream/Gossip.hs describeCluster).
    spec = ClusterSpec(nodes=3, late_nodes=1, target=f"hstream:{IMAGE}", backend="docker")
    placements, prefix = docker_placements(spec, monkeypatch)
    (step,) = HStreamTarget(spec).before_restart(spec, placements, 2)
    assert step.argv[:3] == ("python", "-m", "harness.targets.admin_command")
    hosts = [step.argv[i + 1] for i, a in enumerate(step.argv) if a == "--host"]
    # every other node, straight to its listening client port (late ones are skipped while
    # they do not answer)
    assert hosts == [f"{prefix}12:6570", f"{prefix}14:6590", f"{prefix}15:6600"]
    assert step.argv[-2:] == ("--gone", "2") and step.image is None
    assert re.search(step.expect, "node 2 is gone from every answering peer's member list")
    # The deadline follows the gossip defaults (hstream-gossip Types.hs defaultGossipOpts:
    # probe 2 s, round trip 0.5 s, gossip 1 s; Probe.hs round-robin probing; Utils.hs
    # retransmit limit 4*ceil(ln(n+2))): at least a probe of the node by every peer.
    assert (hstream.PROBE_INTERVAL_S, hstream.ROUNDTRIP_TIMEOUT_S,
            hstream.GOSSIP_INTERVAL_S) == (2.0, 0.5, 1.0)
    assert step.timeout_s == member_gone_deadline_s(4)
    assert step.timeout_s >= 4 * 2.0 + 2.0 + 0.5
    assert member_gone_deadline_s(4) < member_gone_deadline_s(10)
    single = ClusterSpec(nodes=1, target=f"hstream:{IMAGE}", backend="docker")
    assert HStreamTarget(single).before_restart(single, {}, 1) == []


def test_after_start_asks_the_node_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # app/server.hs prints the ready line before the gossip boot; a refused join exits
    # after it (Start.hs): `server ready` on the node catches both, then a lookup.
    spec = ClusterSpec(nodes=3, target=f"hstream:{IMAGE}", backend="docker")
    placements, prefix = docker_placements(spec, monkeypatch)
    ready, lookup = HStreamTarget(spec).after_start(spec, placements, 3)
    assert ready.argv == ("hadmin", "server", "--host", prefix + "14", "--port", "6590",
                          "ready")
    assert ready.image == IMAGE and re.search(ready.expect, "Cluster is ready")
    # Start.hs: BootstrapPings 1+2+4 s apart per silent seed, join retried min(2^n,10) s apart
    assert ready.timeout_s == restart_ready_deadline_s(3)
    assert ready.timeout_s > hstream.JOIN_RETRY_S + hstream.LOOKUP_BLOCK_S
    assert lookup.argv[-3:] == (f"{prefix}14:6590", "--lookup-key", hstream.LOOKUP_PROBE_KEY)


def test_a_missing_hstream_image_is_named_before_anything_starts(
    hstream_spec: ClusterSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hstream.ZOOKEEPER_IMAGE_ENV, raising=False)
    spec = hstream_spec.with_(target="hstream:hstreamdb/hstream:v0.20.3")
    runtime = docker_runtime(spec, monkeypatch, present=(hstream.ZOOKEEPER_IMAGE,))
    target = target_for(spec)
    provision = runtime.provision(target.layout(spec))
    specs = target.processes(spec, provision.placements)
    with pytest.raises(ImageMissing, match=r"image 'hstreamdb/hstream:v0\.20\.3'"):
        runtime.check(specs, target.init_steps(spec, provision.placements))


def test_hstream_refuses_gossip_overrides() -> None:
    spec = ClusterSpec(target=f"hstream:{IMAGE}", gossip={"probe_interval_ms": 100})
    with pytest.raises(TargetError, match="only by the reference target"):
        target_for(spec)


def test_reference_node_flags() -> None:
    spec = ClusterSpec(nodes=2, base_port=19000, defects=("no-refute",),
                       gossip={"probe_interval_ms": 300})
    placements = docker_like_placements(spec, proxied=True)
    store, node1, node2 = target_for(spec).processes(spec, placements)
    # The store is given the run's defects too: it acts on its own (fsync-lie).
    assert flags(list(store.argv)) == {
        "--data-dir": "/data/store", "--port": "19002", "--bind-address": "0.0.0.0",
        "--defect": "no-refute",
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
