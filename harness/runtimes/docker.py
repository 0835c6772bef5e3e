"""The docker runtime: every process in a container of its own on a private network.

- One bridge network per cluster (a free /24 of 172.28.0.0/16), fixed addresses (Toxiproxy
  .2, processes .10, .11, ... in layout order): a restarted container keeps its address.
- A process's Host is its container: spawning it again starts the same container (same
  volumes, one log across incarnations); SIGSTOP/SIGCONT are `docker pause`/`unpause`,
  freezing every process in it; NET_ADMIN lets partitions be iptables rules inside it.
- Toxiproxy runs in one more container (the real image when present, else our embedded
  server); proxies listen on its address at 20000+k and processes advertise them.
- Disk faults: the lazy disk's container alone gets /dev/fuse and CAP_SYS_ADMIN, and the
  store runs inside it, started and killed by `docker exec` (harness.runtimes.docker_colocated).
The harness reaches containers by address (Linux routes to bridge networks). Everything is
labelled with session, cluster and owner run; cleanup is by label (Ryuk cannot be pulled).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests
from docker.types import EndpointConfig

from harness.cleanup import ClusterRecord, owner_alive, owner_label
from harness.faults.iptables import IptablesNet, NodeAddress
from harness.images import REFSERVER_IMAGE, build_hint, connect, ensure_image, our_image_name
from harness.runtimes import (
    ClusterStartError,
    ExecOutputLost,
    HostDown,
    ProcHandle,
    Progress,
    Provision,
    ToxiproxySite,
    proxy_listen_ports,
    run_here,
)
from harness.runtimes.docker_colocated import DockerExecHost
from harness.targets import Endpoint, ImageMissing, InitStep, Placement, ProcessLayout, ProcessSpec
from harness.topology import ClusterSpec

LABEL_PREFIX = "org.hstream-conformance"
LABEL_SESSION = f"{LABEL_PREFIX}.session"
LABEL_CLUSTER = f"{LABEL_PREFIX}.cluster"
LABEL_PROCESS = f"{LABEL_PREFIX}.process"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"  # "<hostname>:<pid>:<process start time>"

SUBNET_POOL = ipaddress.IPv4Network("172.28.0.0/16")
TOXIPROXY_API_PORT = 8474
PROXY_LISTEN_BASE = 20000
REAL_TOXIPROXY_IMAGE = "ghcr.io/shopify/toxiproxy"
IMAGE_ENV = "HSTREAM_CONFORMANCE_REFSERVER_IMAGE"
# The last line of every exec's stdout and of its stderr, printed by a wrapper shell once
# the command ended: output without both did not come back whole (a docker engine under
# load now and then ends an exec with exit 0 and nothing read), which an empty output alone
# cannot tell. One per stream, as docker keeps each stream's order but not their mutual one.
EXEC_END = "\n--hstream-conformance exec ended with status "


class DockerHost:
    """One process's container."""

    def __init__(self, runtime: DockerRuntime, process: str, ip: str, image: str,
                 fuse: bool = False) -> None:
        self.runtime = runtime
        self.name = f"{runtime.spec.label}-{process}"
        self.process = process
        self.ip = ip
        self.image = image
        # The lazy disk's container (harness.runtimes.docker_colocated): it alone may mount.
        self.fuse = fuse
        self.container: Any = None

    def spawn(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> ProcHandle:
        rt = self.runtime
        if self.container is None:
            # A target's process may name its own image (real hstream-server, ZooKeeper);
            # everything else runs in ours.
            self.image = spec.image or self.image
            mounts = {rt.volume(v): {"bind": path, "mode": "rw"}
                      for v, path in spec.volumes.items()}
            # FUSE needs the device and mount(2) (CAP_SYS_ADMIN; AppArmor's docker-default
            # profile denies mounts where AppArmor is on). Every other container stays
            # unprivileged.
            privileges: dict[str, Any] = {"cap_add": ["NET_ADMIN"]}
            if self.fuse:
                privileges = {"cap_add": ["NET_ADMIN", "SYS_ADMIN"],
                              "devices": ["/dev/fuse:/dev/fuse:rwm"],
                              "security_opt": ["apparmor:unconfined"]}
            try:
                self.container = rt.client.containers.create(
                    self.image, list(spec.argv) or None, name=self.name, hostname=self.process,
                    environment=dict(env), volumes=mounts, labels=rt.labels(self.process),
                    network=rt.network.name, **privileges,
                    networking_config={rt.network.name: EndpointConfig(
                        rt.client.api._version, aliases=[self.process], ipv4_address=self.ip)},
                )
            except docker.errors.APIError as exc:
                raise ClusterStartError(f"cannot create the container of {spec.name}: {exc}") \
                    from None
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            raise ClusterStartError(f"cannot start the container of {spec.name}: {exc}") from None
        return ProcHandle(spec.name, self.name, self.container.id, log_path,
                          {"container_id": self.container.id, "ip": self.ip})

    def _status(self) -> str:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return "removed"
        return str(self.container.status)

    def signal(self, handle: ProcHandle, sig: signal.Signals) -> None:
        # docker pause freezes the whole container (cgroup freezer), like SIGSTOP to a group.
        if sig == signal.SIGSTOP:
            self.container.pause()
        elif sig == signal.SIGCONT:
            self.container.unpause()
        else:
            if self._status() == "paused" and sig == signal.SIGKILL:
                self.container.unpause()
            with contextlib.suppress(docker.errors.APIError):  # already exited
                self.container.kill(signal=sig.name)

    def exit_status(self, handle: ProcHandle) -> int | None:
        status = self._status()
        if status in ("exited", "dead", "removed", "created"):
            code = (self.container.attrs.get("State") or {}).get("ExitCode")
            return -1 if code is None else int(code)
        return None

    def exec(self, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Runs argv in the container's network namespace. A paused container cannot exec,
        and other images may lack iptables: then a throwaway container of the refserver
        image joins its namespace (`--network container:<id>`)."""
        status = self._status() if self.container is not None else "absent"
        if status not in ("running", "paused"):
            raise HostDown(f"{self.name} is {status}")
        wrapped = ended_argv(argv, timeout_s)
        if status == "running" and self.image == self.runtime.image:
            result = self.container.exec_run(wrapped)
            return self._unended(int(result.exit_code), result.output, argv)
        helper = self.runtime.client.containers.run(
            self.runtime.image, wrapped, detach=True, cap_add=["NET_ADMIN"],
            network_mode=f"container:{self.container.id}", labels=self.runtime.labels("exec"))
        try:
            done = helper.wait(timeout=timeout_s + 10)
            return self._unended(int(done.get("StatusCode", 1)), helper.logs(), argv)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                helper.remove(force=True)

    def _unended(self, code: int, output: bytes, argv: Sequence[str]) -> tuple[int, str]:
        """The command's own output, once both end lines show it came back whole."""
        text = ended_output(code, output)
        if text is None:
            raise ExecOutputLost(
                f"the output of {shlex.join(argv)[:200]} on {self.name} did not come back "
                f"whole (exit {code}, {len(output)} bytes, not both end lines): the docker "
                "engine loses an exec's output now and then under load")
        return code, text

    def read_log(self, handle: ProcHandle) -> str:
        try:
            text = self.container.logs(stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.NotFound:
            return handle.log_path.read_text(errors="replace") if handle.log_path.exists() else ""
        handle.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle.log_path.write_text(text)
        return text

    def put(self, local: Path, remote: str) -> None:
        import io
        import tarfile

        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(local, arcname=os.path.basename(remote))
        self.container.put_archive(os.path.dirname(remote) or "/", data.getvalue())


def ended_argv(argv: Sequence[str], timeout_s: float) -> list[str]:
    """argv under `timeout`, then the end line with its status (EXEC_END) on both streams."""
    end = EXEC_END.replace("\n", "\\n")
    script = (f'timeout {int(max(1, timeout_s))} "$@"; status=$?; '
              f'printf "{end}%d\\n" "$status"; printf "{end}%d\\n" "$status" >&2; '
              'exit "$status"')
    return ["sh", "-c", script, "sh", *argv]


def ended_output(code: int, output: bytes) -> str | None:
    """The command's own output (stdout and stderr as docker gave them), or None if it did
    not end with the end line of both streams, each with status `code`."""
    text = output.decode(errors="replace")
    end = f"{EXEC_END}{code}\n"
    if text.count(EXEC_END) != 2 or text.count(end) != 2:
        return None
    return text.replace(end, "")


class DockerRuntime:
    name = "docker"

    def __init__(self, spec: ClusterSpec, progress: Progress, record: ClusterRecord) -> None:
        self.spec = spec
        self.progress = progress
        self.record = record
        # The image our own processes (reference server, embedded Toxiproxy) run in.
        self.image = os.environ.get(IMAGE_ENV) or REFSERVER_IMAGE
        self.client: Any = None
        self.network: Any = None
        self._owner = owner_label()
        self._volumes: list[str] = []
        self._lock = threading.Lock()

    def labels(self, process: str) -> dict[str, str]:
        return {LABEL_SESSION: self.spec.session, LABEL_CLUSTER: self.spec.label,
                LABEL_OWNER: self._owner, LABEL_PROCESS: process}

    def volume(self, name: str) -> str:
        full = f"{self.spec.label}-{name}"
        with self._lock:  # processes of one group may share a volume
            if full not in self._volumes:
                self.client.volumes.create(full, labels=self.labels(name))
                self._volumes.append(full)
        return full

    def provision(self, layouts: Sequence[ProcessLayout]) -> Provision:
        spec = self.spec
        if spec.toxiproxy_url:
            raise ClusterStartError(
                "the docker backend runs Toxiproxy inside the cluster's network (nodes must "
                "reach the proxies); drop toxiproxy_url / --toxiproxy-url, which is for the "
                "local backend")
        self.client = connect()
        sweep_orphans(self.client, self.progress)
        if our_image_name(self.image) is None:
            self._require(self.image, "the reference target's processes")
        # (Ours is built or found current in `check`, after the images we cannot build.)
        subnet = self._create_network()
        hosts_ips = list(subnet.hosts())
        ips = {layout.name: str(hosts_ips[9 + i]) for i, layout in enumerate(layouts)}
        toxiproxy_ip = str(hosts_ips[1])
        listen_ports = proxy_listen_ports(layouts, PROXY_LISTEN_BASE) if spec.toxiproxy else {}
        # A process sharing a volume with a lazy disk runs in the disk's container, where
        # the disk's FUSE mount is (harness.runtimes.docker_colocated).
        colocated = _colocated(layouts)
        for name, main in colocated.items():
            ips[name] = ips[main]
        placements: dict[str, Placement] = {}
        hosts: dict[str, DockerHost | DockerExecHost] = {}
        for layout in layouts:
            advertised = {
                port_name: Endpoint(toxiproxy_ip, listen_ports[(layout.name, port_name)])
                if (layout.name, port_name) in listen_ports else Endpoint(ips[layout.name], port)
                for port_name, port in layout.ports.items()
            }
            placements[layout.name] = Placement("0.0.0.0", ips[layout.name], advertised,
                                                dict(layout.volumes))
            if layout.name in colocated:
                continue
            hosts[layout.name] = DockerHost(self, layout.name, ips[layout.name], self.image,
                                            fuse=layout.role == "disk")
        for name, main in colocated.items():
            main_host = hosts[main]
            assert isinstance(main_host, DockerHost)
            hosts[name] = DockerExecHost(main_host, name)
        site = self._toxiproxy_site(toxiproxy_ip, listen_ports) if spec.toxiproxy else None
        nodes = {layout.node_id: layout.name for layout in layouts if layout.node_id is not None}
        addresses = {n: NodeAddress(ips[name], tuple(port for (proc, _), port
                                                      in listen_ports.items() if proc == name))
                     for n, name in nodes.items()}
        net = IptablesNet({n: hosts[name] for n, name in nodes.items()}, addresses,
                          toxiproxy_ip if site else None)
        facts = {"network": {"name": spec.label, "subnet": str(subnet)}}
        return Provision(placements, dict(hosts), site, net, facts)

    def _toxiproxy_site(self, ip: str, listen_ports: Mapping[tuple[str, str], int]
                        ) -> ToxiproxySite:
        real = _local_image(self.client, REAL_TOXIPROXY_IMAGE)
        image = real or self.image
        argv = ["-host", "0.0.0.0", "-port", str(TOXIPROXY_API_PORT)] if real else [
            "python", "-m", "harness.faults.toxiproxy", "--host", "0.0.0.0",
            "--port", str(TOXIPROXY_API_PORT)]
        server = ProcessSpec(name="toxiproxy", role="store", argv=tuple(argv),
                             ports={"api": TOXIPROXY_API_PORT}, ready_log="")
        listen = {key: Endpoint("0.0.0.0", port) for key, port in listen_ports.items()}
        return ToxiproxySite(f"http://{ip}:{TOXIPROXY_API_PORT}", listen,
                             DockerHost(self, "toxiproxy", ip, image), server)

    def _create_network(self) -> ipaddress.IPv4Network:
        used = []
        for network in self.client.networks.list():
            for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError):
                    used.append(ipaddress.ip_network(config["Subnet"], strict=False))
        last_error = ""
        for subnet in SUBNET_POOL.subnets(new_prefix=24):
            if any(subnet.overlaps(other) for other in used):
                continue
            pool = docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
            try:
                self.network = self.client.networks.create(
                    self.spec.label, driver="bridge", ipam=docker.types.IPAMConfig(
                        pool_configs=[pool]), labels=self.labels("network"), check_duplicate=True)
            except docker.errors.APIError as exc:
                # Another run took the subnet between our listing and the create: next one.
                last_error = str(exc)
                if "overlap" in last_error.lower():
                    continue
                raise ClusterStartError(f"cannot create docker network {self.spec.label}: {exc}") \
                    from None
            self.progress(f"network {self.spec.label} on {subnet}")
            return subnet
        raise ClusterStartError(
            f"no free /24 left in {SUBNET_POOL} for the cluster network ({last_error}); "
            "remove stale networks with `docker network prune`")

    def _require(self, image: str, needed_by: str) -> None:
        # Our own images are built on first use (or found current); any other must be here.
        if ensure_image(image, client=self.client, progress=self.progress):
            return
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ImageMissing(image, needed_by, build_hint(image)) from None

    def check(self, specs: Sequence[ProcessSpec], steps: Sequence[InitStep]) -> None:
        needed = [(proc.image or self.image, proc.name) for proc in specs]
        needed += [(step.image, step.description) for step in steps if step.image is not None]
        # Images we cannot build are checked first: a missing one fails at once, before
        # minutes of building ours.
        needed.sort(key=lambda pair: our_image_name(pair[0]) is not None)
        for image, needed_by in needed:
            self._require(image, needed_by)

    def run_init(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        if step.image is None:
            # On the host, like the clients: it reaches the containers' addresses directly.
            return run_here(step, timeout_s, self.spec.session)
        container = self.client.containers.run(step.image, list(step.argv), detach=True,
                                               network=self.network.name,
                                               labels=self.labels("init"))
        try:
            result = container.wait(timeout=timeout_s)
            return int(result.get("StatusCode", 1)), container.logs().decode(errors="replace")
        except requests.RequestException:
            return 1, "(timed out)"
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    def refusal(self, means: str) -> str | None:
        return None

    def teardown(self) -> None:
        if self.client is not None:
            remove_clusters([self.spec.label], self.client)

    @staticmethod
    def sweep(labels: list[str], metas: list[dict[str, Any]]) -> None:
        remove_clusters(labels)


def remove_clusters(labels: list[str], client: Any = None) -> None:
    """Removes every container, network and volume labelled with one of these clusters."""
    try:
        client = client or connect()
    except Exception:
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


def sweep_orphans(client: Any, progress: Progress | None = None) -> list[str]:
    """Removes clusters whose owner is gone and that have no record to say otherwise (the
    records' own sweep, harness.cleanup, keeps detached clusters); catches e.g. a reports
    folder deleted under a crashed run."""
    owners: dict[str, str] = {}
    selector = {"label": LABEL_CLUSTER}
    # Another run may remove its containers between the listing and their inspection.
    for obj in [*client.containers.list(all=True, filters=selector, ignore_removed=True),
                *client.networks.list(filters=selector), *client.volumes.list(filters=selector)]:
        labels = obj.attrs.get("Labels") or (obj.attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_CLUSTER):
            owners.setdefault(labels[LABEL_CLUSTER], labels.get(LABEL_OWNER, ""))
    stale = [label for label, owner in sorted(owners.items())
             if not ClusterRecord(label).exists() and not owner_alive(owner)]
    if stale:
        if progress:
            progress(f"sweeping docker leftovers of dead runs: {', '.join(stale)}")
        remove_clusters(stale, client)
    return stale


def _colocated(layouts: Sequence[ProcessLayout]) -> dict[str, str]:
    """Process name -> the lazy disk process (role "disk") whose container it runs in: a
    process that shares a volume with it (the store, whose data dir the disk mounts over)."""
    found = {}
    for disk in (layout for layout in layouts if layout.role == "disk"):
        for layout in layouts:
            if layout.role != "disk" and set(layout.volumes) & set(disk.volumes):
                found[layout.name] = disk.name
    return found


def _local_image(client: Any, repository: str) -> str | None:
    """A locally present tag of `repository`, or None (nothing is ever pulled)."""
    with contextlib.suppress(docker.errors.APIError):
        for image in client.images.list(name=repository):
            if image.tags:
                return str(image.tags[0])
    return None
