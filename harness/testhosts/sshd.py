"""Test machines for the ssh runtime: containers of docker/sshd-host (a real OpenSSH server on
the base image), reached by address over a private bridge network, and the inventory that
lists them.

A set named NAME is N node hosts h1..hN plus a host `store` (the store and Toxiproxy), on a
network `hsc-hosts-NAME` with a /24 of 172.30.0.0/16: store .10, hN .(10+N), and each node
host owns `extra` more addresses (.100+N, .150+N) for the nodes of clusters larger than N.
Root logs in with a key pair made for the set under reports/.hosts/NAME/. Everything
carries the set's name and its owner (host, pid, start time); a set made by a test run
(`detached=False`) is removed when its owner is gone, one made by `hosts up` only by
`hosts down`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import paramiko
from docker.types import EndpointConfig

from harness import HarnessError
from harness.cleanup import is_same_process, process_start_time, reports_root
from harness.images import (
    BASE_IMAGE,
    DOCKER_DIR,
    HASH_LABEL,
    KIND_LABEL,
    LABEL_PREFIX,
    ImageBuildError,
    connect,
    ensure_image,
    image_id,
    image_label,
)
from harness.runtimes.inventory import HostEntry, Inventory, write_inventory
from harness.runtimes.ssh_connection import SshUnreachable
from harness.runtimes.ssh_connection import connect as ssh_connect

SSHD_IMAGE = "hstream-conformance/sshd-host:latest"
LABEL_SET = f"{LABEL_PREFIX}.test-hosts"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"
LABEL_DETACHED = f"{LABEL_PREFIX}.detached"
SUBNET_POOL = ipaddress.IPv4Network("172.30.0.0/16")
MAX_HOSTS = 40  # node host i owns .10+i, .100+i, .150+i
READY_TIMEOUT_S = 60.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class HostSet:
    name: str
    inventory_path: Path
    inventory: Inventory
    network: str

    def container(self, host: str) -> str:
        """The container standing in for inventory host `host` ("h1", "store")."""
        return f"hsc-hosts-{self.name}-{host}"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"


def _owner_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run: not ours to judge
    return not is_same_process(int(pid), int(start) if start.isdigit() else None)


def set_dir(name: str) -> Path:
    return reports_root() / ".hosts" / name


def build_image(client: docker.DockerClient, progress: Progress) -> str:
    """docker/sshd-host on the base image, skipped when its inputs are unchanged."""
    folder = DOCKER_DIR / "sshd-host"
    ensure_image(BASE_IMAGE, client=client, progress=progress)  # built on first use
    digest = hashlib.sha256(image_id(client, BASE_IMAGE).encode())
    for item in sorted(folder.iterdir()):
        digest.update(item.name.encode() + b"\0" + item.read_bytes())
    content_hash = digest.hexdigest()
    if image_label(client, SSHD_IMAGE, HASH_LABEL) == content_hash:
        return SSHD_IMAGE
    progress(f"{SSHD_IMAGE}: docker build on {BASE_IMAGE}")
    for chunk in client.api.build(path=str(folder), tag=SSHD_IMAGE, rm=True, forcerm=True,
                                  pull=False, decode=True, buildargs={"BASE_IMAGE": BASE_IMAGE},
                                  labels={HASH_LABEL: content_hash, KIND_LABEL: "sshd-host"}):
        if "error" in chunk:
            raise ImageBuildError(f"docker build of {SSHD_IMAGE} failed: {chunk['error']}")
    return SSHD_IMAGE


def _key_pair(folder: Path) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "id_ecdsa"
    if not path.exists():
        paramiko.ECDSAKey.generate().write_private_key_file(str(path))
        path.chmod(0o600)
    key = paramiko.ECDSAKey.from_private_key_file(str(path))
    return path, f"{key.get_name()} {key.get_base64()} hstream-conformance-test-hosts"


def _create_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> Any:
    used = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.ip_network(config["Subnet"], strict=False))
    for subnet in SUBNET_POOL.subnets(new_prefix=24):
        if any(subnet.overlaps(other) for other in used):
            continue
        pool = docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))
        try:
            return client.networks.create(name, driver="bridge", labels=labels,
                                          ipam=docker.types.IPAMConfig(pool_configs=[pool]))
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc).lower():  # else another run took it: try the next
                raise HarnessError(f"cannot create docker network {name}: {exc}") from None
    raise HarnessError(f"no free /24 left in {SUBNET_POOL}; remove stale networks "
                       "(`hstream-conformance hosts down`, `docker network prune`)")


def hosts_up(n: int, name: str = "default", inventory_out: Path | None = None,
             extra: int = 2, detached: bool = True, progress: Progress = print) -> HostSet:
    """Start N node hosts and a store host, wait until each sshd logs root in, write the
    inventory. Replaces a set of the same name."""
    if not 1 <= n <= MAX_HOSTS or not 0 <= extra <= 2:
        raise HarnessError(f"hosts up: 1..{MAX_HOSTS} hosts with 0..2 extra addresses each")
    client = connect()
    sweep_orphans(client)
    hosts_down(name, client)
    image = build_image(client, progress)
    key, public = _key_pair(set_dir(name))
    labels = {LABEL_SET: name, LABEL_OWNER: _owner(), LABEL_DETACHED: str(detached)}
    network = _create_network(client, f"hsc-hosts-{name}", labels)
    subnet = ipaddress.IPv4Network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    entries = [HostEntry("store", str(subnet[10]), key=str(key), role="store")] + [
        HostEntry(f"h{i}", str(subnet[10 + i]), key=str(key), role="node",
                  extra_addresses=tuple(str(subnet[o + i]) for o in (100, 150)[:extra]))
        for i in range(1, n + 1)]
    set_ = HostSet(name, inventory_out or set_dir(name) / "inventory.toml",
                   Inventory("", tuple(entries)), network.name)

    def start(entry: HostEntry) -> None:
        client.containers.run(
            image, detach=True, name=set_.container(entry.name), hostname=entry.name,
            labels=labels, cap_add=["NET_ADMIN"], init=True, network=network.name,
            # Outgoing connections take ports above the ones tests listen on (base ports).
            sysctls={"net.ipv4.ip_local_port_range": "61000 65535"},
            environment={"AUTHORIZED_KEY": public,
                         "EXTRA_ADDRESSES": " ".join(entry.extra_addresses)},
            networking_config={network.name: EndpointConfig(client.api._version,
                                                            ipv4_address=entry.address)})
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                ssh_connect(entry, "the test hosts", timeout_s=5).close()
                return
            except SshUnreachable as exc:
                if time.monotonic() > deadline:
                    raise HarnessError(f"test host {entry.name} did not let root in within "
                                       f"{READY_TIMEOUT_S:.0f}s: {exc}") from None
                time.sleep(0.2)

    progress(f"starting {len(entries)} sshd hosts on {network.name} ({subnet})")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(start, entries))
    except BaseException:
        hosts_down(name, client)
        raise
    write_inventory(set_.inventory, set_.inventory_path,
                    header=f"{n} test hosts and a store host (`hstream-conformance hosts up`); "
                    f"remove them with `hstream-conformance hosts down --name {name}`")
    return set_


def hosts_down(name: str | None = None, client: docker.DockerClient | None = None
               ) -> list[str]:
    """Remove the set `name` (every set when None); returns the names removed."""
    client = client or connect()
    selector = {"label": f"{LABEL_SET}={name}" if name else LABEL_SET}
    names = set()
    for container in client.containers.list(all=True, filters=selector, ignore_removed=True):
        names.add(container.labels.get(LABEL_SET, ""))
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    for network in client.networks.list(filters=selector):
        names.add((network.attrs.get("Labels") or {}).get(LABEL_SET, ""))
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    for removed in names | ({name} if name else set()):
        shutil.rmtree(set_dir(removed), ignore_errors=True)
    return sorted(names)


def sweep_orphans(client: docker.DockerClient) -> list[str]:
    """Remove sets a test run made (not `hosts up`) whose run is gone."""
    stale = set()
    for network in client.networks.list(filters={"label": LABEL_SET}):
        labels = network.attrs.get("Labels") or {}
        if labels.get(LABEL_DETACHED) == "False" and _owner_gone(labels.get(LABEL_OWNER, "")):
            stale.add(labels[LABEL_SET])
    for name in stale:
        hosts_down(name, client)
    return sorted(stale)


@contextlib.contextmanager
def running_hosts(n: int, name: str, progress: Progress = print) -> Iterator[HostSet]:
    """A set for the length of a `with` block (a test session, a benchmark)."""
    found = hosts_up(n, name, detached=False, progress=progress)
    try:
        yield found
    finally:
        hosts_down(name)
