"""The `hstream:<image>` target: real HStreamDB, as the known-good dev setups run it.

ZooKeeper (metastore) + one `ld-dev-cluster` store + N `hstream-server` nodes (plus any
late nodes, started later with the same seed list), all from `<image>` except ZooKeeper
(`ZOOKEEPER_IMAGE`, or `$HSTREAM_CONFORMANCE_ZOOKEEPER_IMAGE`). Mirrors the HStreamDB
quick-start compose, the hstreamdb_erl CI compose and hstreamdb/integration-tests. Needs the
image locally (the docker backend checks and raises `ImageMissing` before starting anything).
Every rule below names the HStreamDB v0.20.3 source it mirrors (paths in hstreamdb/hstream).

Addresses. hstream-server advertises exactly the ports it listens on: a node's ServerNode
carries `--port` and `--internal-port` (`hstream/app/server.hs` action, `serverNodePort =
_serverPort`), lookups and DescribeCluster answer with advertised-address + that port
(`common/hstream/HStream/Common/Types.hs` fromInternalServerNodeWithKey), gossip peers dial
gossip-address + internal port, and each `advertised-listeners` entry is *served* on its own
port too (`app/server.hs` serveListeners: `serverPort = listenerPort`); there is no
advertised-port option (`HStream/Server/Configuration/Cli.hs`). So a node advertises a proxy
endpoint `H:P` the way a real server can: `--advertised-address H` / `--gossip-address H`
and *listening* on P. With Toxiproxy on, every node listens on ports of its own
(base_port + 10k, + 1), and runtimes that put all proxies on one address give each proxy
its upstream's number when the numbers are distinct (harness.runtimes.proxy_listen_ports).
A placement whose advertised port differs from the port the node listens on cannot be
expressed and is refused with a TargetError.

Readiness. `server init` once, then `server ready` on every node (`Handler/Admin.hs`
runCheckReady: "Cluster is ready", else an error result, which makes hadmin exit non-zero,
`hstream-admin/server/HStream/Admin/Server/Command.hs` formatCommandResponse), then a lookup
on every node, since lookups block for 5 s after a node starts
(`common/server/HStream/Common/Server/HashRing.hs` updateHashRing). `hadmin server status`
proves nothing: it always shows the asking node Running (`hstream-gossip/.../Utils.hs`
getClusterStatus).

Tokens (v0.19.0+): the config's `hserver.tokens` holds base64 of each `user:password`,
compared verbatim with the client's "Basic ..." header; hadmin sends no credentials, so on a
token cluster every step goes through `harness.targets.admin_command --token`.

Restarts. A node restarted while a peer still holds it alive is refused with DuplicateNodeId
and exits after its ready line, so `before_restart` waits until no peer lists it any more and
`after_start` asks the node itself whether it is ready.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shlex
from collections.abc import Mapping

from harness.targets import Endpoint, InitStep, Placement, ProcessLayout, ProcessSpec, TargetError
from harness.targets.settings import TargetSettings, hstream_settings
from harness.topology import ClusterSpec

DEFAULT_IMAGE = "hstreamdb/hstream:v0.20.3"
Version = tuple[int, int, int]
# The newest release whose source these rules were read from; an image tagged `latest` (or
# untagged, which docker reads as latest) is taken to be it.
NEWEST_KNOWN_VERSION: Version = (0, 20, 3)
# `hserver.tokens` is read from v0.19.0 on (HStream/Server/Config.hs parseJSONToOptions,
# absent in v0.18.4); an older server ignores the key and would accept every client.
TOKENS_SINCE: Version = (0, 19, 0)

ZOOKEEPER_IMAGE = "zookeeper:3.8"
ZOOKEEPER_IMAGE_ENV = "HSTREAM_CONFORMANCE_ZOOKEEPER_IMAGE"
ZOOKEEPER_READY_LOG = r"binding to port"
ZOOKEEPER = "zookeeper"
STORE = "hstore"
CLIENT_PORT = 6570  # Configuration/Cli.hs / Config.hs defaults: port 6570, internal-port 6571
GOSSIP_PORT = 6571
# With Toxiproxy on, node k (0-based, all node ids in order) listens on base_port + 10k and
# + 10k + 1: distinct numbers, so a proxy can listen on its upstream's own port.
PROXIED_PORT_STRIDE = 10
ZK_PORT = 2181
STORE_ADMIN_PORT = 6440
STORE_ROOT = "/data/store"
CONFIG_PATH = "/etc/hstream/conformance.yaml"

# Gossip timing, fixed in v0.20: app/server.hs starts gossip with defaultGossipOpts
# (hstream-gossip/src/HStream/Gossip/Types.hs defaultGossipOpts), whatever the config says.
PROBE_INTERVAL_S = 2.0
ROUNDTRIP_TIMEOUT_S = 0.5
GOSSIP_INTERVAL_S = 1.0
RETRANSMIT_MULT = 4
# Lookups wait on the hash ring, marked ready 5000 ms after start
# (common/server/HStream/Common/Server/HashRing.hs updateHashRing, defaultMs).
LOOKUP_BLOCK_S = 5.0
# A starting node's gossip boot (hstream-gossip/src/HStream/Gossip/Start.hs): up to 3
# BootstrapPings per silent seed, 1 + 2 + 4 s apart (amIASeed pingRetry); then a join
# retried 4 times, min(2^n s, 10 s) apart (joinCluster, Utils.hs maxRetryTimeInterval),
# before it gives up.
BOOTSTRAP_PING_RETRY_S = 1.0 + 2.0 + 4.0
JOIN_RETRY_S = 2.0 + 4.0 + 8.0 + 10.0
# Our own margin for RPC latency and container scheduling, added to every derived deadline.
SLACK_S = 5.0
# RPC deadline of one admin/membership/lookup call; shorter than LOOKUP_BLOCK_S, so a lookup
# that answers proves the hash ring is ready.
RPC_TIMEOUT_S = 2.0
# Bring-up: the INIT/INITED round between the seeds after `server init` (Start.hs bootstrap).
INIT_READY_DEADLINE_S = 120.0
LOOKUP_DEADLINE_S = LOOKUP_BLOCK_S + RPC_TIMEOUT_S + SLACK_S
LOOKUP_PROBE_KEY = "hstream-conformance-lookup-probe"

INIT_OK = r"Server successfully received init signal"  # Handler/Admin.hs runInit
READY_OK = r"Cluster is ready"  # Handler/Admin.hs runCheckReady ("Cluster is not ready!" else)


def node_name(node_id: int) -> str:
    return f"node-{node_id}"


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none, or only a digest)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.split(":", 1)[1]
    return None if digest else "latest"


def parse_version(image: str) -> Version | None:
    """The HStreamDB version an image's tag names: `vX.Y.Z` (suffixes such as -alpha1
    ignored), `latest` = the newest known; None when the tag names no version."""
    tag = image_tag(image)
    if tag is None:
        return None
    if tag == "latest":
        return NEWEST_KNOWN_VERSION
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+_.].*)?", tag)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def version_text(version: Version | None) -> str:
    return "v{}.{}.{}".format(*version) if version else "unknown"


def config_token(token: str) -> str:
    """What the server's `hserver.tokens` holds for a client token (`user:password`): its
    base64. The server compares "Basic " + that value with the client's authorization header
    byte for byte (hs-grpc HsGrpc/Server/Types.hsc), and clients send HTTP-Basic style
    base64 of `user:password` there."""
    return base64.b64encode(token.encode()).decode()


def node_ports(spec: ClusterSpec, node_id: int) -> tuple[int, int]:
    """The (client, gossip) ports node_id listens on, which are also the ports it advertises
    (see the module docstring): 6570/6571 without Toxiproxy, else distinct per node."""
    if not spec.toxiproxy:
        return CLIENT_PORT, GOSSIP_PORT
    first = spec.base_port + PROXIED_PORT_STRIDE * spec.all_node_ids.index(node_id)
    return first, first + 1


def member_gone_deadline_s(members: int) -> float:
    """How long every peer may take to drop a killed node from its member list.

    Each peer probes the other members one per probe interval in a shuffled round-robin
    order (hstream-gossip Probe.hs scheduleProbe/runProbe), so it probes the killed node
    within `members` intervals (the current one plus the other members - 1); that probe marks
    it suspect after a round trip and an indirect one and confirms it dead when the interval
    runs out (Probe.hs doPing). A peer may learn it earlier from another prober's gossip, sent
    every gossip interval and repeated 4*ceil(ln(n+2)) times (Utils.hs getMessagesToSend).
    """
    retransmits = RETRANSMIT_MULT * math.ceil(math.log(members + 2))
    return (PROBE_INTERVAL_S * (members + 1) + ROUNDTRIP_TIMEOUT_S
            + GOSSIP_INTERVAL_S * retransmits + SLACK_S)


def restart_ready_deadline_s(members: int) -> float:
    """How long a (re)started node may take from its ready line to `server ready`: its
    BootstrapPings to the other seeds, then its join with retries (Start.hs), then the
    lookup block."""
    return (BOOTSTRAP_PING_RETRY_S * max(1, members - 1) + JOIN_RETRY_S + LOOKUP_BLOCK_S
            + SLACK_S)


class HStreamTarget:
    name = "hstream"

    def __init__(self, spec: ClusterSpec, zookeeper_image: str | None = None) -> None:
        if spec.gossip:
            raise TargetError(
                "gossip timing overrides ([gossip] / gossip=...) are supported only by the "
                "reference target; hstream-server v0.20 parses hserver.gossip but starts "
                "gossip with its defaults (app/server.hs: defaultGossipOpts)"
            )
        if spec.profile != "protocol":
            raise TargetError(
                f"profile {spec.profile!r} is the reference server's: real HStreamDB "
                "behaves as it does; drop --profile for an hstream target")
        self.spec = spec
        self.image: str = spec.image or DEFAULT_IMAGE
        self.version: Version | None = parse_version(self.image)
        self.zookeeper_image: str = (
            zookeeper_image or os.environ.get(ZOOKEEPER_IMAGE_ENV) or ZOOKEEPER_IMAGE
        )
        if spec.tokens:
            if self.version is None:
                raise TargetError(
                    f"tokens need HStreamDB {version_text(TOKENS_SINCE)} or newer, and the tag "
                    f"of {self.image!r} names no version; tag the image vX.Y.Z (or latest = "
                    f"{version_text(NEWEST_KNOWN_VERSION)})"
                )
            if self.version < TOKENS_SINCE:
                raise TargetError(
                    f"tokens need HStreamDB {version_text(TOKENS_SINCE)} or newer (the "
                    f"hserver.tokens key appears there); {self.image} is "
                    f"{version_text(self.version)}, which ignores the key and would accept "
                    "every client; drop the tokens or use a newer image"
                )

    def settings(self, spec: ClusterSpec) -> TargetSettings:
        """The defaults this version starts gossip with, whatever its config says
        (app/server.hs:146 passes defaultGossipOpts), and its known departures."""
        return hstream_settings(version_text(self.version))

    @property
    def version_text(self) -> str:
        """The HStreamDB version this target runs, as reported in progress and errors."""
        return version_text(self.version)

    def layout(self, spec: ClusterSpec) -> list[ProcessLayout]:
        # Real HStreamDB listens on in-container ports; spec.base_port only moves the
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
        nodes = []
        for i in spec.all_node_ids:
            client, gossip = node_ports(spec, i)
            nodes.append(ProcessLayout(
                name=node_name(i),
                role="node",
                ports={"client": client, "gossip": gossip},
                proxied=("client", "gossip"),
                volumes={"store-data": STORE_ROOT},
                node_id=i,
                deferred=i in spec.late_node_ids,
            ))
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
            ready_log=ZOOKEEPER_READY_LOG,
            image=self.zookeeper_image,
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
        # Seed self-detection compares (gossip-address, internal-port) with the seed entries
        # (hstream-gossip Start.hs amIASeed): the seeds are the advertised gossip endpoints.
        seeds = ",".join(
            str(self._advertised(spec, placements, i, "gossip")) for i in spec.node_ids
        )
        metastore = f"zk://{zk_at.host}:{ZK_PORT}"
        # Late nodes get the same seed list and join through it when they are started.
        nodes = [
            self._server(spec, i, placements, seeds, metastore, store_at.host)
            for i in spec.all_node_ids
        ]
        return [zookeeper, store, *nodes]

    def _advertised(
        self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int,
        port_name: str,
    ) -> Endpoint:
        name = node_name(node_id)
        client, gossip = node_ports(spec, node_id)
        listening = client if port_name == "client" else gossip
        endpoint = placements[name].advertised[port_name]
        if endpoint.port != listening:
            raise TargetError(
                f"{name}: the backend placed its {port_name} port behind {endpoint}, but "
                f"{name} listens on {listening} and hstream-server "
                f"{self.version_text} can only advertise a port it listens on (no "
                "advertised-port option; advertised listeners are served on their own port: "
                "HStream/Server/Configuration/Cli.hs, app/server.hs); a proxy for the "
                f"hstream target must listen on port {listening}, on any address"
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
        client_port, gossip_port = node_ports(spec, node_id)
        client = self._advertised(spec, placements, node_id, "client")
        gossip = self._advertised(spec, placements, node_id, "gossip")
        server_argv = [
            "/usr/local/bin/hstream-server",
            "--config-path", CONFIG_PATH,
            "--bind-address", "0.0.0.0",
            "--port", str(client_port),
            "--internal-port", str(gossip_port),
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
        # above override every one of them (Config.hs parseJSONToOptions: `.:`); write one.
        # Tokens exist only in the file (no flag), as base64 values (config_token).
        config = "\n".join(
            [
                "hserver:",
                f"  id: {node_id}",
                f"  port: {client_port}",
                f"  internal-port: {gossip_port}",
                "  bind-address: 0.0.0.0",
                f"  advertised-address: {client.host}",
                f"  gossip-address: {gossip.host}",
                f"  metastore-uri: {metastore}",
                f'  seed-nodes: "{seeds}"',
                *(["  tokens:", *(f'    - "{config_token(t)}"' for t in spec.tokens)]
                  if spec.tokens else []),
                "",
            ]
        )
        script = (
            f"mkdir -p {shlex.quote(CONFIG_PATH.rsplit('/', 1)[0])} && "
            f"printf '%s' {shlex.quote(config)} > {shlex.quote(CONFIG_PATH)} && "
            f"exec {shlex.join(server_argv)}"
        )
        return ProcessSpec(
            name=name,
            role="node",
            argv=("bash", "-c", script),
            ports={"client": client_port, "gossip": gossip_port},
            # app/server.hs serve: "Server is started on port ..., waiting for cluster to get
            # ready" (printed before the gossip boot: readiness is `server ready`).
            ready_log=r"Server is started on port",
            image=self.image,
            volumes={"store-data": STORE_ROOT},
            proxied=("client", "gossip"),
            node_id=node_id,
            ready_timeout_s=120.0,
            deferred=node_id in spec.late_node_ids,
        )

    # -- steps -------------------------------------------------------------------------
    def _direct(self, spec: ClusterSpec, placements: Mapping[str, Placement],
                node_id: int) -> Endpoint:
        # Directly to the server (not its proxy), like the known-good setups: a test that
        # starts with a toxic on the proxy must still get an initialised cluster.
        return placements[node_name(node_id)].direct(node_ports(spec, node_id)[0])

    def _python(self, spec: ClusterSpec, *args: str) -> tuple[str, ...]:
        token = ("--token", config_token(spec.tokens[0])) if spec.tokens else ()
        return ("python", "-m", "harness.targets.admin_command", *token,
                "--timeout", str(RPC_TIMEOUT_S), *args)

    def _admin(self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int,
               command: str) -> tuple[tuple[str, ...], str | None]:
        """argv and image of `server <command>` on a node: hadmin from the image, or, on a
        token cluster, our admin_command, since hadmin sends no credentials
        (hstream-admin/server/HStream/Admin/Server/Command.hs withAdminClient')."""
        at = self._direct(spec, placements, node_id)
        if spec.tokens:
            return self._python(spec, "--host", str(at), f"server {command}"), None
        return ("hadmin", "server", "--host", at.host, "--port", str(at.port), command), \
            self.image

    def _ready_step(self, spec: ClusterSpec, placements: Mapping[str, Placement],
                    node_id: int, timeout_s: float, when: str = "") -> InitStep:
        argv, image = self._admin(spec, placements, node_id, "ready")
        return InitStep(
            description=f"server ready on {node_name(node_id)}{when} says {READY_OK!r}",
            argv=argv,
            expect=READY_OK,
            image=image,
            timeout_s=timeout_s,
            retry_interval_s=1.0,
        )

    def _lookup_step(self, spec: ClusterSpec, placements: Mapping[str, Placement],
                     node_id: int) -> InitStep:
        at = self._direct(spec, placements, node_id)
        return InitStep(
            description=(f"lookups answer on {node_name(node_id)} (blocked "
                         f"{LOOKUP_BLOCK_S:.0f}s after its start)"),
            argv=self._python(spec, "--host", str(at), "--lookup-key", LOOKUP_PROBE_KEY),
            expect=r"^node \d+ at ",
            timeout_s=LOOKUP_DEADLINE_S,
            retry_interval_s=0.5,
        )

    def init_steps(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[InitStep]:
        argv, image = self._admin(spec, placements, 1, "init")
        steps = [
            InitStep(
                description=f"server init on node-1 (HStreamDB {self.version_text})",
                argv=argv,
                # An early or repeated init is harmless (Utils.hs initCluster only warns).
                expect=INIT_OK,
                image=image,
                timeout_s=INIT_READY_DEADLINE_S,
            )
        ]
        steps += [self._ready_step(spec, placements, i, INIT_READY_DEADLINE_S)
                  for i in spec.node_ids]
        steps += [self._lookup_step(spec, placements, i) for i in spec.node_ids]
        return steps

    def before_restart(
        self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int
    ) -> list[InitStep]:
        """Wait until no peer that answers still lists the killed node as a member: a peer
        that holds it alive refuses its join with DuplicateNodeId (hstream-gossip
        Server/Handlers.hs sendJoinCore), and the node exits (Start.hs joinCluster')."""
        peers = [i for i in spec.all_node_ids if i != node_id]
        if not peers:
            return []
        hosts = [arg for i in peers
                 for arg in ("--host", str(self._direct(spec, placements, i)))]
        members = len(spec.all_node_ids)
        return [
            InitStep(
                description=(f"wait until the peers of {node_name(node_id)} drop it from their "
                             "member lists (else they refuse its restart: DuplicateNodeId)"),
                argv=self._python(spec, *hosts, "--gone", str(node_id)),
                expect=rf"node {node_id} is gone",
                timeout_s=member_gone_deadline_s(members),
                retry_interval_s=0.5,
            )
        ]

    def after_start(
        self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int
    ) -> list[InitStep]:
        """After a restart or a join: the ready line comes before the gossip boot
        (app/server.hs), and a refused join exits after it, so ask the node itself."""
        deadline = restart_ready_deadline_s(len(spec.all_node_ids))
        return [
            self._ready_step(spec, placements, node_id, deadline, when=" after its start"),
            self._lookup_step(spec, placements, node_id),
        ]
