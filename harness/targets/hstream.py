"""The `hstream:<image>` target: real HStreamDB, as the known-good dev setups run it.

ZooKeeper (metastore) + one `ld-dev-cluster` store + N `hstream-server` nodes (plus any
late nodes, started later with the same seed list), all from `<image>` except ZooKeeper;
then `hadmin server --host <node-1> init` once and `hadmin server --host <node> status`
until every node reports N servers Running.
Mirrors the HStreamDB quick-start compose, the hstreamdb_erl CI compose and
hstreamdb/integration-tests. Needs the image locally (the docker backend checks and raises
`ImageMissing` before starting anything).

Addresses: hstream-server advertises its *listening* ports (it has no advertised-port flag),
so a proxy in front of it must listen on the same port on another address; a placement that
changes the port is refused here rather than producing a cluster clients cannot reach.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from harness.targets import Endpoint, InitStep, Placement, ProcessLayout, ProcessSpec, TargetError
from harness.topology import ClusterSpec

ZOOKEEPER_IMAGE = "zookeeper:3.8"
ZOOKEEPER = "zookeeper"
STORE = "hstore"
CLIENT_PORT = 6570
GOSSIP_PORT = 6571
ZK_PORT = 2181
STORE_ADMIN_PORT = 6440
STORE_ROOT = "/data/store"
CONFIG_PATH = "/etc/hstream/conformance.yaml"


def node_name(node_id: int) -> str:
    return f"node-{node_id}"


class HStreamTarget:
    name = "hstream"

    def __init__(self, spec: ClusterSpec) -> None:
        if spec.image is None:
            raise TargetError(f"target {spec.target!r} names no image; use hstream:<image>")
        if spec.gossip:
            raise TargetError(
                "gossip timing overrides ([gossip] / gossip=...) are supported only by the "
                "reference target; hstream-server takes its defaults from its own config"
            )
        self.spec = spec
        self.image: str = spec.image

    def layout(self, spec: ClusterSpec) -> list[ProcessLayout]:
        # Real HStreamDB listens on fixed in-container ports; spec.base_port only moves the
        # reference target (every container has its own address, so ports never clash).
        zookeeper = ProcessLayout(
            name=ZOOKEEPER,
            role="metastore",
            ports={"zk": ZK_PORT},
            volumes={"zk-data": "/data", "zk-datalog": "/datalog"},
        )
        store = ProcessLayout(
            name=STORE,
            role="store",
            ports={"store-admin": STORE_ADMIN_PORT},
            volumes={"store-data": STORE_ROOT},
        )
        nodes = [
            ProcessLayout(
                name=node_name(i),
                role="node",
                ports={"client": CLIENT_PORT, "gossip": GOSSIP_PORT},
                proxied=("client", "gossip"),
                volumes={"store-data": STORE_ROOT},
                node_id=i,
                deferred=i in spec.late_node_ids,
            )
            for i in spec.all_node_ids
        ]
        return [zookeeper, store, *nodes]

    def processes(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[ProcessSpec]:
        zk_at = placements[ZOOKEEPER]
        store_at = placements[STORE]
        zookeeper = ProcessSpec(
            name=ZOOKEEPER,
            role="metastore",
            argv=(),  # the image's own entrypoint and command
            ports={"zk": ZK_PORT},
            ready_log=r"binding to port",
            image=ZOOKEEPER_IMAGE,
            volumes={"zk-data": "/data", "zk-datalog": "/datalog"},
        )
        store = ProcessSpec(
            name=STORE,
            role="store",
            argv=(
                "/usr/local/bin/ld-dev-cluster",
                "--root", STORE_ROOT,
                "--use-tcp",
                "--tcp-host", store_at.host,
                "--user-admin-port", str(STORE_ADMIN_PORT),
                # Required where the kernel lacks DSCP reflection (the quick-start's note).
                "--param", "enable-dscp-reflection=false",
                "--no-interactive",
            ),
            ports={"store-admin": STORE_ADMIN_PORT},
            ready_log=r"LogDevice Cluster running",
            image=self.image,
            volumes={"store-data": STORE_ROOT},
            ready_timeout_s=120.0,
        )
        seeds = ",".join(
            str(self._advertised(placements, node_name(i), "gossip", GOSSIP_PORT))
            for i in spec.node_ids
        )
        metastore = f"zk://{zk_at.host}:{ZK_PORT}"
        # Late nodes get the same seed list and join through it when they are started.
        nodes = [
            self._server(spec, i, placements, seeds, metastore, store_at.host)
            for i in spec.all_node_ids
        ]
        return [zookeeper, store, *nodes]

    def _advertised(
        self, placements: Mapping[str, Placement], name: str, port_name: str, port: int
    ) -> Endpoint:
        endpoint = placements[name].advertised[port_name]
        if endpoint.port != port:
            raise TargetError(
                f"{name}: hstream-server advertises its listening {port_name} port {port}, "
                f"but the backend placed it (or its proxy) at {endpoint}; proxies for the "
                "hstream target must listen on the same port on their own address"
            )
        return endpoint

    def _server(
        self,
        spec: ClusterSpec,
        node_id: int,
        placements: Mapping[str, Placement],
        seeds: str,
        metastore: str,
        store_host: str,
    ) -> ProcessSpec:
        name = node_name(node_id)
        at = placements[name]
        client = self._advertised(placements, name, "client", CLIENT_PORT)
        gossip = self._advertised(placements, name, "gossip", GOSSIP_PORT)
        server_argv = [
            "/usr/local/bin/hstream-server",
            "--config-path", CONFIG_PATH,
            "--bind-address", "0.0.0.0",
            "--port", str(CLIENT_PORT),
            "--internal-port", str(GOSSIP_PORT),
            "--server-id", str(node_id),
            "--seed-nodes", seeds,
            "--advertised-address", client.host,
            "--gossip-address", gossip.host,
            "--metastore-uri", metastore,
            "--store-config", f"{STORE_ROOT}/logdevice.conf",
            "--store-admin-host", store_host,
            "--store-admin-port", str(STORE_ADMIN_PORT),
            "--log-level", "debug",
        ]
        # hstream-server refuses to start without a config file whose hserver.id,
        # advertised-address, metastore-uri and seed-nodes keys exist, even though the flags
        # above override every one of them; write a minimal one first.
        config = "\n".join(
            [
                "hserver:",
                f"  id: {node_id}",
                f"  port: {CLIENT_PORT}",
                f"  internal-port: {GOSSIP_PORT}",
                "  bind-address: 0.0.0.0",
                f"  advertised-address: {client.host}",
                f"  gossip-address: {gossip.host}",
                f"  metastore-uri: {metastore}",
                f'  seed-nodes: "{seeds}"',
                *(["  tokens:", *(f'    - "{t}"' for t in spec.tokens)] if spec.tokens else []),
                "",
            ]
        )
        script = (
            f"mkdir -p {shlex.quote(CONFIG_PATH.rsplit('/', 1)[0])} && "
            f"printf '%s' {shlex.quote(config)} > {shlex.quote(CONFIG_PATH)} && "
            f"exec {shlex.join(server_argv)}"
        )
        del at  # placement only matters through the advertised endpoints above
        return ProcessSpec(
            name=name,
            role="node",
            argv=("bash", "-c", script),
            ports={"client": CLIENT_PORT, "gossip": GOSSIP_PORT},
            ready_log=r"Server is started on port",
            image=self.image,
            volumes={"store-data": STORE_ROOT},
            proxied=("client", "gossip"),
            node_id=node_id,
            ready_timeout_s=120.0,
            deferred=node_id in spec.late_node_ids,
        )

    def init_steps(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[InitStep]:
        def hadmin(name: str, *command: str) -> tuple[str, ...]:
            # Directly to the server (not its proxy), like the known-good setups.
            host = placements[name].host
            return ("hadmin", "server", "--host", host, "--port", str(CLIENT_PORT), *command)

        steps = [
            InitStep(
                description="hadmin server init on node-1",
                argv=hadmin(node_name(1), "init"),
                image=self.image,
                timeout_s=120.0,
            )
        ]
        # Ready when every node's status table lists all N servers as Running.
        all_running = "(?s)" + r".*?\bRunning\b" * spec.nodes
        steps += [
            InitStep(
                description=f"hadmin server status on {node_name(i)} shows {spec.nodes} Running",
                argv=hadmin(node_name(i), "status"),
                expect=all_running,
                image=self.image,
                timeout_s=120.0,
                retry_interval_s=2.0,
            )
            for i in spec.node_ids
        ]
        return steps
