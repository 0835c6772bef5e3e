"""The docker backend: every process in a container of its own on a private network.

Layout of one cluster:
- a user-defined bridge network `<cluster label>` with a /24 of 172.28.0.0/16 chosen free at
  start; processes get fixed addresses in it (toxiproxy .2, then .10, .11, ... in layout
  order), so every address is known before anything starts and a restarted container keeps
  its address;
- one container per process (`<cluster label>-<process>`), NET_ADMIN so partitions can be
  iptables rules inside it; the reference target's processes run in the refserver image;
- with Toxiproxy, one more container on the network runs it (the real
  `ghcr.io/shopify/toxiproxy` image when present locally, else the embedded server from the
  refserver image); its API port is published on 127.0.0.1 and each process advertises its
  proxy endpoints, so clients and peers' gossip cross the proxy.

Clients run on the host and reach containers by their network addresses (the host has a
route to every bridge network on Linux). Every container, network and volume carries the
session and cluster labels and its owner (host, pid, process start time); a run's start
sweeps what dead runs left behind. Ryuk (testcontainers' reaper) cannot be pulled here, so
it is disabled and cleanup is by label. Logs are copied from Docker to
reports/<session>/logs/<cluster name>/<process>.log whenever they are read and at stop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests
from docker.models.containers import Container
from docker.types import EndpointConfig

from harness import HarnessError
from harness.cluster import (
    Backend,
    Cluster,
    ClusterStartError,
    ProxyInfo,
)
from harness.cleanup import (
    ClusterRecord,
    is_same_process,
    process_start_time,
    register_sweeper,
    reports_root,
    sweep,
    track,
    untrack,
)
from harness.faults import iptables
from harness.faults.partition import Grudge, normalize
from harness.images import (
    REFSERVER_IMAGE,
    build_hint,
    connect,
)
from harness.targets import (
    Endpoint,
    ImageMissing,
    InitStep,
    Placement,
    ProcessLayout,
    ProcessSpec,
    Target,
    target_for,
)
from harness.topology import SESSION_ENV, ClusterSpec

# Ryuk would be pulled on first use; everything here is cleaned up by label instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402

Progress = Callable[[str], None]

LABEL_PREFIX = "org.hstream-conformance"
LABEL_SESSION = f"{LABEL_PREFIX}.session"
LABEL_CLUSTER = f"{LABEL_PREFIX}.cluster"
LABEL_PROCESS = f"{LABEL_PREFIX}.process"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"  # "<hostname>:<pid>:<process start time>"

SUBNET_POOL = ipaddress.IPv4Network("172.28.0.0/16")
TOXIPROXY_HOST_INDEX = 2
FIRST_PROCESS_INDEX = 10
TOXIPROXY_API_PORT = 8474
PROXY_LISTEN_BASE = 20000
REAL_TOXIPROXY_IMAGE = "ghcr.io/shopify/toxiproxy"


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def _owner_alive(owner: str | None) -> bool:
    """Whether the run that made an object still runs (objects of other hosts: assume so)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    pid, _, start = rest.partition(":")
    try:
        return is_same_process(int(pid), int(start) if start not in ("", "None") else None)
    except ValueError:
        return False


class DockerBackend(Backend):
    name = "docker"

    def __init__(
        self,
        progress: Progress | None = None,
        detached: bool = False,
        image: str = REFSERVER_IMAGE,
    ) -> None:
        self.progress = progress or _stderr_progress
        self.detached = detached
        self.image = image

    def start(self, spec: ClusterSpec) -> DockerCluster:
        if spec.backend != "docker":
            raise HarnessError(f"DockerBackend cannot start a {spec.backend!r} cluster")
        if spec.toxiproxy_url:
            raise ClusterStartError(
                "the docker backend runs Toxiproxy inside the cluster's network (nodes must "
                "reach the proxies); drop toxiproxy_url / --toxiproxy-url, which is for the "
                "local backend"
            )
        client = connect()
        sweep()
        sweep_orphans(client, self.progress)
        target = target_for(spec)
        layouts = target.layout(spec)
        _require(client, self.image, "the reference target's processes")
        cluster = DockerCluster(spec, client, self.image, self.progress, self.detached)
        try:
            cluster._start(target, layouts)
        except BaseException:
            cluster.stop()
            raise
        return cluster


def _require(client: docker.DockerClient, image: str, needed_by: str) -> None:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageMissing(image, needed_by, build_hint(image)) from None


class _Container:
    """One process's container: its spec, address, and the marks readiness needs."""

    def __init__(self, spec: ProcessSpec, ip: str, log_path: Path, image: str) -> None:
        self.spec = spec
        self.ip = ip
        self.log_path = log_path
        self.image = image
        self.tc: DockerContainer | None = None
        self.state = "stopped"
        # Docker keeps one log across restarts: readiness after a restart waits for one more
        # ready line than the log held before it.
        self.ready_lines_seen = 0

    @property
    def container(self) -> Container:
        assert self.tc is not None, f"{self.spec.name} was never started"
        return self.tc.get_wrapped_container()


class DockerCluster(Cluster):
    def __init__(
        self,
        spec: ClusterSpec,
        client: docker.DockerClient,
        image: str,
        progress: Progress,
        detached: bool = False,
    ) -> None:
        super().__init__(spec)
        self.client = client
        self.image = image
        self.progress = progress
        self.log_dir = reports_root() / spec.session / "logs" / spec.name
        self.record = ClusterRecord.create(spec.label, spec.session, "docker", detached=detached)
        self.labels = {
            LABEL_SESSION: spec.session,
            LABEL_CLUSTER: spec.label,
            LABEL_OWNER: _owner(),
        }
        self.network: Any = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.containers: dict[str, _Container] = {}
        self.volumes: list[str] = []
        self._volumes_lock = threading.Lock()
        self._toxiproxy: _Container | None = None
        self._toxiproxy_handle: Any = None
        self._partition = iptables.PartitionState()
        self._stopped = False
        if not detached:
            track(self)

    # -- start ---------------------------------------------------------------------
    def _start(self, target: Target, layouts: list[ProcessLayout]) -> None:
        spec = self.spec
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.record.update_meta(spec=spec.to_json())
        self._create_network()
        assert self.subnet is not None
        hosts = list(self.subnet.hosts())
        toxiproxy_ip = str(hosts[TOXIPROXY_HOST_INDEX - 1])
        ips = {
            layout.name: str(hosts[FIRST_PROCESS_INDEX - 1 + i]) for i, layout in enumerate(layouts)
        }

        listen_ports: dict[tuple[str, str], int] = {}
        for layout in layouts:
            for port_name in layout.proxied if spec.toxiproxy else ():
                listen_ports[(layout.name, port_name)] = PROXY_LISTEN_BASE + len(listen_ports)

        placements: dict[str, Placement] = {}
        for layout in layouts:
            advertised = {
                port_name: (
                    Endpoint(toxiproxy_ip, listen_ports[(layout.name, port_name)])
                    if (layout.name, port_name) in listen_ports
                    else Endpoint(ips[layout.name], port)
                )
                for port_name, port in layout.ports.items()
            }
            placements[layout.name] = Placement(
                "0.0.0.0", ips[layout.name], advertised, dict(layout.volumes)
            )

        specs = target.processes(spec, placements)
        steps = target.init_steps(spec, placements)
        for proc in specs:
            _require(self.client, proc.image or self.image, proc.name)
        for step in steps:
            if step.image is not None:
                _require(self.client, step.image, step.description)

        if spec.toxiproxy:
            self._start_toxiproxy(toxiproxy_ip)
            self._create_proxies(layouts, placements, listen_ports)

        for proc in specs:
            self.containers[proc.name] = _Container(
                proc, ips[proc.name], self.log_dir / f"{proc.name}.log", proc.image or self.image
            )
        self._add_node_handles(specs, placements, lambda name: self.containers[name].log_path)
        # Processes of one role start together (the nodes wait for each other anyway);
        # roles start in layout order, each group ready before the next begins.
        for group in _consecutive_roles([p for p in specs if not p.deferred]):
            # Creating a container is a few hundred ms of daemon work: a large group starts
            # in parallel (bounded, the daemon serialises much of it anyway).
            with ThreadPoolExecutor(max_workers=min(8, len(group))) as pool:
                for future in [
                    pool.submit(self._create_and_start, self.containers[proc.name])
                    for proc in group
                ]:
                    future.result()
            for proc in group:
                self._await_ready(self.containers[proc.name])
        for step in steps:
            self._run_init_step(step)
        self._write_status()
        self.progress(f"cluster {spec.label} ready on docker: " + ", ".join(self.client_urls()))

    def _create_network(self) -> None:
        used = []
        for network in self.client.networks.list():
            for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError):
                    used.append(ipaddress.ip_network(config["Subnet"], strict=False))
        last_error = ""
        for subnet in SUBNET_POOL.subnets(new_prefix=24):
            if any(subnet.overlaps(other) for other in used):
                continue
            ipam = docker.types.IPAMConfig(
                pool_configs=[
                    docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
                ]
            )
            try:
                self.network = self.client.networks.create(
                    self.spec.label,
                    driver="bridge",
                    ipam=ipam,
                    labels=self.labels,
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                # Another run took the subnet between our listing and the create: next one.
                last_error = str(exc)
                if "overlap" in last_error.lower():
                    continue
                raise ClusterStartError(
                    f"cannot create docker network {self.spec.label}: {exc}"
                ) from None
            self.subnet = subnet
            self.extra["network"] = {"name": self.spec.label, "subnet": str(subnet)}
            self.progress(f"network {self.spec.label} on {subnet}")
            return
        raise ClusterStartError(
            f"no free /24 left in {SUBNET_POOL} for the cluster network ({last_error}); "
            "remove stale networks with `docker network prune`"
        )

    def _labels(self, process: str) -> dict[str, str]:
        return {**self.labels, LABEL_PROCESS: process}

    def _create_and_start(self, box: _Container) -> None:
        spec = box.spec
        assert self.network is not None
        volumes = []
        for volume, path in spec.volumes.items():
            name = f"{self.spec.label}-{volume}"
            with self._volumes_lock:  # processes of one group may share a volume
                if name not in self.volumes:
                    self.client.volumes.create(name, labels=self._labels(volume))
                    self.volumes.append(name)
            volumes.append((name, path))
        env = {
            **spec.env,
            SESSION_ENV: self.spec.session,
            "HSTREAM_CONFORMANCE_CLUSTER": self.spec.label,
        }
        tc = DockerContainer(
            box.image,
            # An empty argv keeps the image's own command (e.g. the ZooKeeper image).
            command=list(spec.argv) or None,  # type: ignore[arg-type]
            name=f"{self.spec.label}-{spec.name}",
            env=env,
        )
        for name, path in volumes:
            tc.with_volume_mapping(name, path, "rw")
        tc.with_kwargs(
            hostname=spec.name,
            labels=self._labels(spec.name),
            cap_add=["NET_ADMIN"],
            network=self.network.name,
            networking_config={
                self.network.name: EndpointConfig(
                    self.client.api._version, aliases=[spec.name], ipv4_address=box.ip
                )
            },
        )
        box.tc = tc
        self.progress(f"starting {spec.name} ({box.image}, {box.ip})")
        try:
            tc.start()
        except docker.errors.APIError as exc:
            raise ClusterStartError(f"cannot start the container of {spec.name}: {exc}") from None
        box.state = "running"
        self._sync_node_handle(box)

    def _await_ready(self, box: _Container) -> None:
        spec = box.spec
        pattern = re.compile(spec.ready_log)
        began = time.monotonic()
        deadline = began + spec.ready_timeout_s
        while True:
            text = self._snapshot_log(box)
            seen = len(pattern.findall(text))
            if seen > box.ready_lines_seen:
                box.ready_lines_seen = seen
                self.progress(
                    f"  {spec.name} ready in {time.monotonic() - began:.1f}s "
                    f"(container {box.container.short_id}, log {box.log_path})"
                )
                return
            box.container.reload()
            if box.container.status in ("exited", "dead"):
                code = box.container.attrs.get("State", {}).get("ExitCode")
                raise ClusterStartError(
                    f"{spec.name} exited with status {code} before logging "
                    f"{spec.waiting_for!r}; last log lines:\n{_tail(text)}\n"
                    f"full log: {box.log_path}"
                )
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{spec.name} did not log {spec.waiting_for!r} within "
                    f"{spec.ready_timeout_s:.0f}s; last log lines:\n{_tail(text)}\n"
                    f"full log: {box.log_path}"
                )
            time.sleep(0.1)

    def _snapshot_log(self, box: _Container) -> str:
        """Copies the container's whole log (every incarnation) to its file; returns it."""
        try:
            text = box.container.logs(stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.NotFound:
            return box.log_path.read_text(errors="replace") if box.log_path.exists() else ""
        box.log_path.parent.mkdir(parents=True, exist_ok=True)
        box.log_path.write_text(text)
        return text

    def _run_init_once(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        if step.image is None:
            # On the host, like the clients: it reaches the containers' addresses directly.
            return super()._run_init_once(step, timeout_s)
        assert self.network is not None
        container = self.client.containers.run(
            step.image,
            list(step.argv),
            detach=True,
            network=self.network.name,
            labels=self._labels("init"),
        )
        try:
            result = container.wait(timeout=timeout_s)
            output = container.logs().decode(errors="replace").strip()
            return int(result.get("StatusCode", 1)), output
        except requests.RequestException:
            return 1, "(timed out)"
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    # -- Toxiproxy -------------------------------------------------------------------
    def _start_toxiproxy(self, ip: str) -> None:
        from harness.faults.toxiproxy import ToxiproxyError, connect_toxiproxy

        real = _local_image(self.client, REAL_TOXIPROXY_IMAGE)
        if real is not None:
            image, argv = real, ["-host", "0.0.0.0", "-port", str(TOXIPROXY_API_PORT)]
        else:
            image = self.image
            argv = [
                "python",
                "-m",
                "harness.faults.toxiproxy",
                "--host",
                "0.0.0.0",
                "--port",
                str(TOXIPROXY_API_PORT),
            ]
        spec = ProcessSpec(
            name="toxiproxy",
            role="store",
            argv=tuple(argv),
            ports={"api": TOXIPROXY_API_PORT},
            ready_log="",
        )
        box = _Container(spec, ip, self.log_dir / "toxiproxy.log", image)
        self._toxiproxy = box
        tc = DockerContainer(
            image,
            command=argv,  # type: ignore[arg-type]
            name=f"{self.spec.label}-toxiproxy",
        )
        # Published on loopback only, on a port Docker picks (no clash between parallel runs).
        tc.ports[f"{TOXIPROXY_API_PORT}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
        tc.with_kwargs(
            hostname="toxiproxy",
            labels=self._labels("toxiproxy"),
            network=self.network.name,
            networking_config={
                self.network.name: EndpointConfig(
                    self.client.api._version, aliases=["toxiproxy"], ipv4_address=ip
                )
            },
        )
        box.tc = tc
        self.progress(f"starting toxiproxy ({image}, {ip}) ... waiting for its API")
        tc.start()
        box.state = "running"
        deadline = time.monotonic() + 20.0
        last = ""
        while time.monotonic() < deadline:
            box.container.reload()
            if box.container.status in ("exited", "dead"):
                raise ClusterStartError(
                    f"toxiproxy container exited; last log lines:\n"
                    f"{_tail(self._snapshot_log(box))}\nfull log: {box.log_path}"
                )
            bindings = (box.container.ports or {}).get(f"{TOXIPROXY_API_PORT}/tcp") or []
            if bindings:
                url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
                try:
                    handle = connect_toxiproxy(url)
                except ToxiproxyError as exc:
                    last = str(exc)
                else:
                    self.toxiproxy_url = url
                    self._toxiproxy_handle = handle
                    self.extra["toxiproxy"] = {
                        "kind": handle.kind,
                        "version": handle.version,
                        "image": image,
                        "api_url": url,
                        "address": ip,
                    }
                    self.progress(f"  toxiproxy ready: {url} ({handle.kind} {handle.version})")
                    return
            time.sleep(0.2)
        raise ClusterStartError(
            f"toxiproxy in {self.spec.label}-toxiproxy did not answer its API within 20s "
            f"({last}); last log lines:\n{_tail(self._snapshot_log(box))}\n"
            f"full log: {box.log_path}"
        )

    def _create_proxies(
        self,
        layouts: list[ProcessLayout],
        placements: Mapping[str, Placement],
        listen_ports: Mapping[tuple[str, str], int],
    ) -> None:
        assert self.toxiproxy_url is not None
        for layout in layouts:
            at = placements[layout.name]
            for port_name in layout.proxied:
                name = f"{self.spec.label}-{layout.name}-{port_name}"
                port = listen_ports[(layout.name, port_name)]
                upstream = at.direct(layout.ports[port_name])
                self._toxiproxy_handle.create_proxy(name, f"0.0.0.0:{port}", str(upstream))
                self.proxies[(layout.name, port_name)] = ProxyInfo(
                    name, at.advertised[port_name], upstream, self.toxiproxy_url
                )

    # -- handles -----------------------------------------------------------------------
    def _sync_node_handle(self, box: _Container) -> None:
        for node in self.nodes:
            if node.name == box.spec.name:
                node.state = box.state
                if box.tc is not None and box.tc._container is not None:
                    node.container_id = box.container.id

    def _box(self, n: int) -> _Container:
        return self.containers[self.node(n).name]

    def _store_box(self) -> _Container:
        for box in self.containers.values():
            if box.spec.role == "store":
                return box
        raise HarnessError("this cluster has no store process")

    def _write_status(self) -> None:
        self.extra["logs_dir"] = str(self.log_dir)
        self.extra["containers"] = {
            name: {
                "ip": box.ip,
                "image": box.image,
                "state": box.state,
                "id": box.container.short_id if box.tc and box.tc._container else None,
            }
            for name, box in self.containers.items()
        }
        self.record.update_meta(status=self.status())

    # -- process faults -------------------------------------------------------------------
    def _kill(self, box: _Container) -> None:
        container = box.container
        container.reload()
        if container.status in ("running", "paused"):
            container.kill(signal="SIGKILL")
            deadline = time.monotonic() + 10
            while container.status not in ("exited", "dead") and time.monotonic() < deadline:
                time.sleep(0.05)
                container.reload()
        box.state = "killed"
        self._sync_node_handle(box)
        self._snapshot_log(box)
        self._write_status()

    def _restart(self, box: _Container) -> None:
        if box.tc is None:  # a late node's first start: its container does not exist yet
            self._create_and_start(box)
        else:
            self._kill(box)
            self.progress(f"restarting {box.spec.name} (same container, same address)")
            box.container.start()
            box.state = "running"
            self._sync_node_handle(box)
        # The restart made a fresh network namespace: the grudge in force must be reloaded
        # before the node talks to anyone.
        node_id = box.spec.node_id
        if node_id is not None and self._partition.grudge:
            self._partition.pending.add(node_id)
            self._load_pending()
        self._await_ready(box)
        self._write_status()

    def kill(self, n: int) -> None:
        self._kill(self._box(n))

    def pause(self, n: int) -> None:
        box = self._box(n)
        try:
            box.container.pause()
        except docker.errors.APIError as exc:
            raise HarnessError(f"cannot pause {box.spec.name} (state {box.state}): {exc}") from None
        box.state = "paused"
        self._sync_node_handle(box)
        self._write_status()

    def resume(self, n: int) -> None:
        box = self._box(n)
        try:
            box.container.unpause()
        except docker.errors.APIError as exc:
            raise HarnessError(
                f"cannot resume {box.spec.name} (state {box.state}): {exc}"
            ) from None
        box.state = "running"
        self._sync_node_handle(box)
        self._write_status()

    def restart(self, n: int) -> None:
        self._restart(self._box(n))

    def kill_store(self) -> None:
        self._kill(self._store_box())

    def restart_store(self) -> None:
        self._restart(self._store_box())

    # -- network faults ------------------------------------------------------------------
    def _node_addresses(self) -> dict[int, iptables.NodeAddress]:
        addresses = {}
        for node in self.nodes:
            box = self.containers[node.name]
            ports = tuple(
                info.listen.port for (proc, _), info in self.proxies.items() if proc == node.name
            )
            addresses[node.id] = iptables.NodeAddress(box.ip, ports)
        return addresses

    def _exec_in(self, box: _Container) -> iptables.Exec:
        """Runs argv in the container's network namespace.

        A running container of ours has iptables: exec in it. A paused one cannot exec, and
        other images may lack iptables: then a throwaway container of the refserver image
        joins its network namespace (`--network container:<id>`), which works in both cases.
        """

        def run(argv: Sequence[str]) -> tuple[int, str]:
            box.container.reload()
            if box.container.status == "running" and box.image == self.image:
                result = box.container.exec_run(list(argv))
                return int(result.exit_code), result.output.decode(errors="replace")
            helper = self.client.containers.run(
                self.image,
                list(argv),
                detach=True,
                cap_add=["NET_ADMIN"],
                network_mode=f"container:{box.container.id}",
                labels=self._labels("iptables"),
            )
            try:
                status = helper.wait(timeout=30)
                return int(status.get("StatusCode", 1)), helper.logs().decode(errors="replace")
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    helper.remove(force=True)

        return run

    def _load(self, node_id: int, ruleset: iptables.Ruleset) -> None:
        box = self._box(node_id)
        iptables.apply(self._exec_in(box), box.spec.name, ruleset)

    def _load_pending(self) -> None:
        rules = iptables.grudge_rules(
            self._partition.grudge, self._node_addresses(), self._proxy_ip()
        )
        for node_id in sorted(self._partition.pending):
            box = self._box(node_id)
            box.container.reload()
            if box.container.status in ("running", "paused"):
                self._load(node_id, rules[node_id])
                self._partition.pending.discard(node_id)

    def _proxy_ip(self) -> str | None:
        return self._toxiproxy.ip if self._toxiproxy is not None else None

    def partition(self, grudge: Grudge) -> None:
        """Loads the grudge's rules into every node that has a network namespace now.

        A killed node has none: its rules are loaded when it restarts. The grudge replaces
        the previous one on every node, including nodes it no longer names.
        """
        normalized = normalize(grudge, [node.id for node in self.nodes])
        rules = iptables.grudge_rules(normalized, self._node_addresses(), self._proxy_ip())
        self._partition = iptables.PartitionState(dict(normalized), set())
        live = []
        for node in self.nodes:
            box = self.containers[node.name]
            if box.tc is None:  # a late node not started yet: rules load when it joins
                self._partition.pending.add(node.id)
                continue
            box.container.reload()
            if box.container.status in ("running", "paused"):
                live.append(node.id)
            else:
                self._partition.pending.add(node.id)
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(live)))) as pool:
            for future in [pool.submit(self._load, n, rules[n]) for n in live]:
                future.result()
        self.extra["partition"] = {
            "grudge": {str(k): sorted(v) for k, v in sorted(normalized.items())},
            "rules": {
                str(n): {"in": list(r.inbound), "out": list(r.outbound)}
                for n, r in sorted(rules.items())
                if r.inbound or r.outbound
            },
        }
        self.progress(f"partition: {self.extra['partition']['grudge']}")
        self._write_status()

    def heal(self) -> None:
        if self._stopped:
            return
        self._partition = iptables.PartitionState()
        live = []
        for node in self.nodes:
            box = self.containers[node.name]
            if box.tc is None:
                continue  # a late node not started yet has no rules
            box.container.reload()
            if box.container.status in ("running", "paused"):
                live.append(node.id)
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(live)))) as pool:
            for future in [pool.submit(self._load, n, iptables.Ruleset()) for n in live]:
                future.result()
        if self.toxiproxy_url:
            with contextlib.suppress(requests.RequestException):
                requests.post(f"{self.toxiproxy_url}/reset", timeout=5)
        self.extra.pop("partition", None)
        self.progress("healed: partition rules flushed, proxies reset")
        self._write_status()

    def partition_rules(self, n: int) -> list[str]:
        """The iptables rules now in node n's partition chains (evidence for reports)."""
        box = self._box(n)
        return iptables.read_rules(self._exec_in(box), box.spec.name)

    def exec(self, name: str, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Runs argv inside a running container of this cluster ("node-1", "store", ...)."""
        box = self.containers.get(name) or (
            self._toxiproxy if name == "toxiproxy" and self._toxiproxy else None
        )
        if box is None:
            raise HarnessError(f"no process {name!r}; processes: {', '.join(self.containers)}")
        argv = ["timeout", str(int(max(1, timeout_s))), *argv]
        result = box.container.exec_run(argv)
        return int(result.exit_code), result.output.decode(errors="replace")

    # -- evidence and teardown -----------------------------------------------------------
    def logs(self) -> dict[str, Path]:
        boxes = list(self.containers.values())
        if self._toxiproxy is not None:
            boxes.append(self._toxiproxy)
        found = {}
        for box in boxes:
            if box.tc is not None and box.tc._container is not None:
                self._snapshot_log(box)
                found[box.spec.name] = box.log_path
        return found

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        untrack(self)
        with contextlib.suppress(Exception):
            self.logs()
        boxes = [*self.containers.values(), *([self._toxiproxy] if self._toxiproxy else [])]
        started = [box for box in boxes if box.tc is not None and box.tc._container is not None]

        def remove(box: _Container) -> None:
            with contextlib.suppress(docker.errors.APIError):
                box.container.remove(force=True, v=True)

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(started)))) as pool:
            list(pool.map(remove, started))
        for box in started:
            box.state = "stopped"
            self._sync_node_handle(box)
        remove_clusters([self.spec.label], client=self.client)
        self.record.remove()


# -- sweeping leftovers -----------------------------------------------------------------
def remove_clusters(labels: list[str], client: docker.DockerClient | None = None) -> None:
    """Removes every container, network and volume labelled with one of these clusters."""
    if not labels:
        return
    try:
        client = client or connect()
    except HarnessError:
        return
    for label in labels:
        selector = {"label": f"{LABEL_CLUSTER}={label}"}
        for container in client.containers.list(all=True, filters=selector, ignore_removed=True):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters=selector):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
        for volume in client.volumes.list(filters=selector):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


def sweep_orphans(client: docker.DockerClient, progress: Progress | None = None) -> list[str]:
    """Removes clusters whose owner is gone and that have no record to say otherwise.

    Clusters with a record are swept by harness.cleanup.sweep (which calls
    `remove_clusters` for the stale ones and keeps detached ones); this catches the rest,
    e.g. when the reports folder was deleted under a crashed run.
    """
    owners: dict[str, str] = {}
    selector = {"label": LABEL_CLUSTER}
    # Another run may remove its containers between the listing and their inspection.
    objects: list[Any] = [
        *client.containers.list(all=True, filters=selector, ignore_removed=True),
        *client.networks.list(filters=selector),
        *client.volumes.list(filters=selector),
    ]
    for obj in objects:
        labels = obj.attrs.get("Labels") or (obj.attrs.get("Config") or {}).get("Labels") or {}
        label = labels.get(LABEL_CLUSTER)
        if label:
            owners.setdefault(label, labels.get(LABEL_OWNER, ""))
    stale = [
        label
        for label, owner in sorted(owners.items())
        if not ClusterRecord(label).exists() and not _owner_alive(owner)
    ]
    if stale:
        if progress:
            progress(f"sweeping docker leftovers of dead runs: {', '.join(stale)}")
        remove_clusters(stale, client=client)
    return stale


def _local_image(client: docker.DockerClient, repository: str) -> str | None:
    """A locally present tag of `repository`, or None (nothing is ever pulled)."""
    with contextlib.suppress(docker.errors.APIError):
        for image in client.images.list(name=repository):
            if image.tags:
                return str(image.tags[0])
    return None


def _consecutive_roles(specs: list[ProcessSpec]) -> list[list[ProcessSpec]]:
    groups: list[list[ProcessSpec]] = []
    for proc in specs:
        if groups and groups[-1][0].role == proc.role:
            groups[-1].append(proc)
        else:
            groups.append([proc])
    return groups


def _tail(text: str, lines: int = 20) -> str:
    found = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in found) or "    (empty)"


# Records of dead docker runs name clusters whose containers only this module can remove.
register_sweeper(remove_clusters)
