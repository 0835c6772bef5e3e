"""The ssh runtime: a cluster's processes on machines of an inventory (harness.runtimes.
inventory), started, signalled and swept over SSH by the launcher (ssh_launcher); exit
statuses and logs come back over SFTP.

Placement, and why:
- nodes go one per host while hosts last, then onto the hosts' extra_addresses: every node
  listens on the same ports, so each binds an address of its own;
- the store (and Toxiproxy, unless it runs on this machine) gets a host of its own (role
  "store", else the last host): partition rules drop by address, so a node cut off must not
  share an address or a host with what the others need;
- proxies listen on the Toxiproxy host, which the clusters of a session share, at ports
  derived from base_port: 32 per block of 10 base ports (the plugin's PORT_BLOCK), all below
  Linux's ephemeral range (32768+), where an outgoing connection could hold one.
Partitions are iptables rules over SSH (IptablesNet); they are refused, naming the host, when
a host lacks iptables or carries two nodes (rules hold for a whole host).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

from harness import HarnessError
from harness.cleanup import ClusterRecord
from harness.faults.iptables import IptablesNet, NodeAddress
from harness.runtimes import (
    ClusterStartError,
    PortInUse,
    Progress,
    Provision,
    ToxiproxySite,
    run_here,
)
from harness.runtimes.inventory import HostEntry, Inventory, InventoryError, load_inventory
from harness.runtimes.local import LocalHost, toxiproxy_server_argv
from harness.runtimes.ssh_connection import Session
from harness.runtimes.ssh_host import SshHost
from harness.runtimes.ssh_install import ROOT, Wheels, ensure_launcher, ensure_python, wanted_stamp
from harness.targets import Endpoint, InitStep, Placement, ProcessLayout, ProcessSpec, TargetError
from harness.topology import ClusterSpec

PROXY_PORT_BASE = 20000
T = TypeVar("T")


class SshRuntime:
    name = "ssh"

    def __init__(self, spec: ClusterSpec, progress: Progress, record: ClusterRecord) -> None:
        self.spec = spec
        self.progress = progress
        self.record = record
        self.hosts: dict[str, SshHost] = {}  # inventory name -> host
        self.control: LocalHost | None = None  # runs Toxiproxy with [toxiproxy] on = "control"
        self._ports: list[tuple[SshHost, Endpoint, str]] = []
        self._partition_refusal: str | None = None

    def provision(self, layouts: Sequence[ProcessLayout]) -> Provision:
        spec = self.spec
        if spec.image or any(layout.role == "metastore" for layout in layouts):
            raise TargetError(f"target {spec.target!r} runs containers; the ssh runtime runs the "
                              "reference target only (use --backend docker)")
        if not spec.inventory:
            raise InventoryError("the ssh backend needs an inventory: --inventory FILE or "
                                 "[cluster] inventory (`hstream-conformance hosts up N`)")
        inventory = load_inventory(spec.inventory)
        where, store, self._partition_refusal = plan(inventory, layouts)
        proxy_addr = (urlparse(spec.toxiproxy_url).hostname if spec.toxiproxy_url else
                      inventory.toxiproxy_listen if inventory.toxiproxy_on == "control"
                      else store.address)
        entries = {entry.name: entry for entry, _ in where.values()}
        self.record.update_meta(ssh={"hosts": [e.to_json() for e in entries.values()]})
        self.hosts = {name: SshHost(Session(e, inventory.source), spec.label)
                      for name, e in entries.items()}
        placements: dict[str, Placement] = {}
        listen: dict[tuple[str, str], Endpoint] = {}
        proxy_port = PROXY_PORT_BASE + (spec.base_port // 10 % 380) * 32
        for layout in layouts:
            entry, addr = where[layout.name]
            advertised = {}
            for port_name, port in layout.ports.items():
                advertised[port_name] = Endpoint(addr, port)
                self._ports.append((self.hosts[entry.name], advertised[port_name],
                                    f"{layout.name} {port_name}"))
                if spec.toxiproxy and port_name in layout.proxied:
                    assert proxy_addr is not None
                    advertised[port_name] = listen[(layout.name, port_name)] = \
                        Endpoint(proxy_addr, proxy_port + len(listen))
            volumes = {v: f"{ROOT}/{spec.label}/data/{v}" for v in layout.volumes}
            placements[layout.name] = Placement(addr, addr, advertised, volumes)
        nodes = [layout for layout in layouts if layout.role == "node"]
        self._prepare(inventory, {where[n.name][0].name for n in nodes},
                      [path for at in placements.values() for path in at.volumes.values()])
        site = self._toxiproxy_site(inventory, store, listen)
        ids = {n.name: n.node_id for n in nodes if n.node_id is not None}
        net = None if self._partition_refusal else IptablesNet(
            {i: self.hosts[where[name][0].name] for name, i in ids.items()},
            {i: NodeAddress(where[name][1], tuple(at.port for (proc, _), at in listen.items()
                                                  if proc == name)) for name, i in ids.items()},
            proxy_addr if spec.toxiproxy else None)
        hosts = {layout.name: self.hosts[where[layout.name][0].name] for layout in layouts}
        return Provision(placements, dict(hosts), site, net,
                         {"hosts": {n: e.address for n, e in entries.items()}})

    def _prepare(self, inventory: Inventory, node_hosts: set[str], volumes: list[str]) -> None:
        """Every host at once: log in, launcher, iptables (nodes' hosts); then, only once
        every host let us in (a bad host fails fast, before any upload), Python and dirs."""
        stamp, wheels = wanted_stamp(), Wheels(self.progress)

        def log_in(host: SshHost) -> str | None:
            host.launcher = ensure_launcher(host.session)
            if host.name not in node_hosts:
                return None
            status, output = host.exec(["iptables", "-S"])
            return None if status == 0 else (
                f"host {host.name} cannot run iptables ({output.strip()[-120:] or status}): "
                f"install it there (`apt-get install iptables`) and log in as root, or set "
                f"sudo = true in {inventory.source}")

        def install(host: SshHost) -> None:
            host.python = ensure_python(host.session, wheels, stamp)
            host.session.run(["mkdir", "-p", f"{host.dir}/logs", *volumes])

        lacking = [r for r in self._on_every_host(log_in) if r]
        self._partition_refusal = self._partition_refusal or next(iter(lacking), None)
        self._on_every_host(install)

    def _on_every_host(self, step: Callable[[SshHost], T]) -> list[T]:
        """`step` on every host at once; every host's failure in one line."""
        errors: list[str] = []
        results: list[T] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = {pool.submit(step, host): host for host in self.hosts.values()}
            for future, host in futures.items():
                try:
                    results.append(future.result())
                except HarnessError as exc:
                    errors.append(str(exc))
                except OSError as exc:
                    errors.append(f"host {host.name}: {exc}")
        if errors:
            raise ClusterStartError("; ".join(errors))
        return results

    def _toxiproxy_site(self, inventory: Inventory, store: HostEntry,
                        listen: dict[tuple[str, str], Endpoint]) -> ToxiproxySite | None:
        spec = self.spec
        if not spec.toxiproxy:
            return None
        if spec.toxiproxy_url:
            return ToxiproxySite(spec.toxiproxy_url, listen)
        port = spec.base_port + 3
        on_control = inventory.toxiproxy_on == "control"
        address = inventory.toxiproxy_listen if on_control else store.address
        assert address is not None
        host: LocalHost | SshHost
        if on_control:
            host = self.control = LocalHost(self.record)
            argv = toxiproxy_server_argv(address, port)
        else:
            host = self.hosts[store.name]
            argv = ["python", "-m", "harness.faults.toxiproxy", "--host", address, "--port",
                    str(port)]
            self._ports += [(host, at, "a Toxiproxy port")
                            for at in (Endpoint(address, port), *listen.values())]
        server = ProcessSpec(name="toxiproxy", role="store", argv=tuple(argv),
                             ports={"api": port}, ready_log="")
        return ToxiproxySite(f"http://{address}:{port}", listen, host, server)

    def check(self, specs: Sequence[ProcessSpec], steps: Sequence[InitStep]) -> None:
        def busy(host: SshHost) -> list[tuple[Endpoint, str]]:
            mine = [(at, what) for h, at, what in self._ports if h is host]
            wanted = json.dumps([[at.host, at.port] for at, _ in mine]).encode()
            taken = json.loads(host._launch("ports", stdin=wanted)[1] or "[]")
            return [(at, f"{what} on host {host.name}") for at, what in mine
                    if [at.host, at.port] in taken]

        for found in self._on_every_host(busy):
            if found:
                raise PortInUse(*found[0])

    def run_init(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        return run_here(step, timeout_s, self.spec.session)

    def refusal(self, means: str) -> str | None:
        return self._partition_refusal if means == "partition" else None

    def teardown(self) -> None:
        if self.control is not None:
            self.control.stop_all()
        hosts, self.hosts = [h for h in self.hosts.values() if h.launcher], {}

        def sweep(host: SshHost) -> None:
            try:
                host.sweep([self.spec.label])
            except HarnessError as exc:
                self.progress(f"could not clean up host {host.name}: {exc}")
            host.session.close()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(sweep, hosts))

    @staticmethod
    def sweep(labels: list[str], metas: list[dict[str, Any]]) -> None:
        """Reconnect to the hosts a dead run's records name and sweep its labels there."""
        wanted: dict[tuple[str, int, str], tuple[HostEntry, list[str]]] = {}
        for label, meta in zip(labels, metas, strict=True):
            for data in (meta.get("ssh") or {}).get("hosts", []):
                entry = HostEntry.from_json(data)
                key = (entry.address, entry.port, entry.user)
                wanted.setdefault(key, (entry, []))[1].append(label)

        def sweep(entry: HostEntry, found: list[str]) -> None:
            # A dead run's hosts may be gone for good: do not wait long for them.
            host = SshHost(Session(entry, "the cluster record", timeout_s=3.0), found[0])
            with contextlib.suppress(HarnessError, OSError):
                host.sweep(found)
            host.session.close()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: sweep(*item), wanted.values()))


def plan(inventory: Inventory, layouts: Sequence[ProcessLayout]
         ) -> tuple[dict[str, tuple[HostEntry, str]], HostEntry, str | None]:
    """Process name -> (host, address it binds), the store's host, and why partitions are
    refused when a host carries two nodes or a node and the store (module docstring)."""
    hosts = list(inventory.hosts)
    store = next((h for h in hosts if h.role == "store"), None) or (
        [h for h in hosts if h.role is None] or hosts)[-1]
    node_hosts = [h for h in hosts if h is not store and h.role != "store"] or [store]
    nodes = [layout for layout in layouts if layout.role == "node"]
    slots = [(h, h.addresses[r]) for r in range(max(len(h.addresses) for h in node_hosts))
             for h in node_hosts if r < len(h.addresses)]
    if len(nodes) > len(slots):
        raise InventoryError(
            f"{inventory.source}: {len(slots)} node address(es) on {len(node_hosts)} host(s) "
            f"for {len(nodes)} nodes: add hosts or extra_addresses (`hstream-conformance "
            f"hosts up {len(nodes)}` makes enough)")
    where = {layout.name: slots[i] for i, layout in enumerate(nodes)}
    where.update({layout.name: (store, store.address) for layout in layouts
                  if layout.role != "node"})
    carried: dict[str, list[str]] = {}
    for layout in layouts:
        carried.setdefault(where[layout.name][0].name, []).append(layout.name)
    shared = next((f"{' and '.join(names)} share host {host}: partition rules hold for a "
                   f"whole host; give each node a host of its own (`hstream-conformance hosts "
                   f"up {len(nodes)}`)" for host, names in carried.items()
                   if len(names) > 1 and set(names) & {n.name for n in nodes}), None)
    return where, store, shared

