"""The cluster orchestration, written once over a Runtime's Hosts (Jepsen's `db`).

`start_cluster(spec)` asks the target for its layout, the runtime (`spec.backend`, see
harness.runtimes) for hosts and addresses, starts Toxiproxy and its proxies, starts every
process in layout order (processes of one role together), waits for each readiness line,
runs the target's init steps and returns a `Cluster`. Faults and clients only use that
handle, so a suite runs unchanged on every runtime; faults reach it through the nemesis
(harness.nemesis), which asks `refusal(means)` first.

Node numbers `n` are HServer ids (1..spec.nodes, then late nodes).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import HarnessError
from harness.cleanup import ClusterRecord, reports_root, track, untrack
from harness.faults.partition import Grudge, normalize
from harness.runtimes import (
    ClusterStartError,
    Host,
    PortInUse,
    ProcHandle,
    Progress,
    Provision,
    Runtime,
    runtime_for,
)
from harness.targets import (
    Endpoint,
    InitStep,
    Placement,
    ProcessSpec,
    Target,
    settings_for,
    target_for,
)
from harness.targets.settings import TargetSettings
from harness.topology import SESSION_ENV, ClusterSpec

if TYPE_CHECKING:
    from harness.lazydisk.control import DiskControl

__all__ = [
    "Cluster",
    "ClusterStartError",
    "NodeHandle",
    "PortInUse",
    "ProxyInfo",
    "UnknownNode",
    "UnsupportedFault",
    "start_cluster",
]

KILL_WAIT_S = 10.0  # how long a SIGKILLed process may take to be reaped
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long
GRACEFUL_STOP_S = 10.0  # a node's graceful stop (stop_node) may take this long


class UnsupportedFault(HarnessError):
    """The runtime cannot apply this fault truthfully; the message says which one can."""


class UnknownNode(HarnessError):
    pass


@dataclass
class NodeHandle:
    """One HServer node of a running cluster, as clients and faults see it."""

    id: int
    name: str  # "node-1"
    client: Endpoint  # advertised client endpoint (through the proxy when proxied)
    gossip: Endpoint  # advertised gossip endpoint (through the proxy when proxied)
    direct_client: Endpoint  # the server's own listener, bypassing any proxy
    direct_gossip: Endpoint
    host: str = ""  # the runtime Host it runs on
    log_path: Path | None = None
    pid: int | None = None  # when the host knows it by pid (local, ssh)
    container_id: str | None = None  # when it runs in a container of its own (docker)
    # "running" | "killed" | "paused" | "stopped" | "pending" (a late node not yet joined)
    state: str = "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "client_url": f"hstream://{self.client}",
            "client": str(self.client),
            "gossip": str(self.gossip),
            "direct_client": str(self.direct_client),
            "direct_gossip": str(self.direct_gossip),
            "host": self.host,
            "log": str(self.log_path) if self.log_path else None,
            "pid": self.pid,
            "container_id": self.container_id,
            "state": self.state,
        }


@dataclass(frozen=True)
class ProxyInfo:
    """A Toxiproxy proxy in front of one port of one process."""

    name: str  # Toxiproxy proxy name, e.g. "c0-node-1-client"
    listen: Endpoint  # where clients and peers reach it
    upstream: Endpoint
    api_url: str  # the Toxiproxy REST API that owns it


@dataclass
class _Process:
    """One process of the cluster: its spec, its host, and its current incarnation."""

    spec: ProcessSpec
    host: Host
    log_path: Path
    handle: ProcHandle | None = None
    state: str = "stopped"
    # Readiness after a restart must not match an earlier incarnation's line: the log keeps
    # every incarnation, so we wait for one more ready line than it held at the spawn.
    ready_lines: int = 0
    env: dict[str, str] = field(default_factory=dict)


class Cluster:
    """A running cluster. `stop()` is idempotent and is also run on Ctrl-C / SIGTERM."""

    # Means a fault may need: "signal" (kill/restart a process), "pause" (SIGSTOP/SIGCONT),
    # "store" (kill/restart the store), "partition" (cut links between nodes),
    # "toxiproxy" (proxies in front of ports), "join" (late nodes to start),
    # "clock" (nodes under the clock layer, harness.clocklayer),
    # "disk" (the store's data directory on the lazy disk, harness.lazydisk).
    MEANS = ("signal", "pause", "store", "partition", "toxiproxy", "join", "clock", "disk")

    def __init__(self, spec: ClusterSpec, progress: Progress | None = None,
                 detached: bool = False) -> None:
        self.spec = spec
        self.progress: Progress = progress or _stderr_progress
        self.nodes: list[NodeHandle] = []
        self.toxiproxy_url: str | None = None
        self.proxies: dict[tuple[str, str], ProxyInfo] = {}  # (process, port name) -> proxy
        self.extra: dict[str, Any] = {}  # runtime facts for status output
        self.log_dir = reports_root() / spec.session / "logs" / spec.name
        self.record = ClusterRecord.create(spec.label, spec.session, spec.backend,
                                           detached=detached)
        self.runtime: Runtime = runtime_for(spec, self.progress, self.record)
        self.processes: dict[str, _Process] = {}
        self.target: Target | None = None
        self.provision: Provision | None = None
        self._toxiproxy: _Process | None = None
        self._partition: dict[str, Any] | None = None
        self._stopped = False
        if not detached:
            track(self)

    # -- addressing ---------------------------------------------------------------
    def node(self, n: int) -> NodeHandle:
        for node in self.nodes:
            if node.id == n:
                return node
        raise UnknownNode(
            f"no node {n} in this cluster; node ids are {', '.join(str(x.id) for x in self.nodes)}"
        )

    def client_url(self, n: int | None = None) -> str:
        """`hstream://host:port` of node n (default: the first running node), via its proxy."""
        if n is not None:
            return f"hstream://{self.node(n).client}"
        for node in self.nodes:
            if node.state == "running":
                return f"hstream://{node.client}"
        return f"hstream://{self.nodes[0].client}"

    def client_urls(self) -> list[str]:
        """Every node's URL, except late nodes that have not joined yet."""
        return [f"hstream://{node.client}" for node in self.nodes if node.state != "pending"]

    def proxy(self, n: int, port_name: str = "client") -> ProxyInfo:
        """The Toxiproxy proxy in front of node n's `port_name` ("client" or "gossip")."""
        name = self.node(n).name
        try:
            return self.proxies[(name, port_name)]
        except KeyError:
            if not self.proxies:
                raise HarnessError(
                    "this cluster runs without Toxiproxy; start it with toxiproxy enabled"
                ) from None
            ports = sorted({p for (proc, p) in self.proxies if proc == name})
            raise HarnessError(
                f"no proxy for {name} port {port_name!r}; proxied ports: {', '.join(ports)}"
            ) from None

    @property
    def settings(self) -> TargetSettings:
        """What its target runs with (harness.targets.settings): bounds derive from it."""
        return settings_for(self.spec)

    # -- what this cluster can do -------------------------------------------------
    def refusal(self, means: str) -> str | None:
        """Why this cluster cannot provide `means` (one line saying what to do), or None."""
        if means not in self.MEANS:
            return f"unknown means {means!r}; known: {', '.join(self.MEANS)}"
        if means == "toxiproxy" and not self.toxiproxy_url:
            return ("this cluster runs without Toxiproxy (--no-toxiproxy); start it with "
                    "proxies to inject link faults")
        if means == "store" and self._store() is None:
            return "this cluster has no store process of ours (the target manages its own)"
        if means == "join" and not self.spec.late_node_ids:
            return "this cluster has no late nodes; set late_nodes in its spec"
        if means == "clock":
            from harness.clocklayer import cluster_refusal

            return cluster_refusal(self)
        if means == "disk" and "disk" not in self.processes:
            if not self.spec.disk_faults:
                return ("this cluster's store is on a plain directory; start it with "
                        "disk_faults=True ([cluster] disk_faults = true) for disk faults")
            if self.spec.target != "reference":
                # Asked for, and ignored by the target: a suite that needs the disk skips
                # with this instead of failing to start (the store is the target's own).
                return (f"the lazy disk goes under the reference server's store only; the "
                        f"{self.spec.target} target's store is its own")
            from harness.targets.reference import disk_refusal

            return disk_refusal(self.spec) or "this cluster's target has no lazy disk"
        if means == "partition" and (self.provision is None or self.provision.net is None):
            return self.runtime.refusal("partition") or (
                f"the {self.spec.backend} runtime has no means to cut links")
        return self.runtime.refusal(means)

    def _require(self, means: str) -> None:
        reason = self.refusal(means)
        if reason is not None:
            raise UnsupportedFault(reason)

    # -- start ---------------------------------------------------------------------
    def _start(self) -> None:
        spec = self.spec
        self.target = target = target_for(spec)
        layouts = target.layout(spec)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.record.update_meta(spec=spec.to_json())
        self.provision = provision = self.runtime.provision(layouts)
        self.extra.update(provision.facts)
        specs = target.processes(spec, provision.placements)
        steps = target.init_steps(spec, provision.placements)
        self.runtime.check(specs, steps)
        if spec.toxiproxy and provision.toxiproxy is not None:
            self._start_toxiproxy()
            self._create_proxies(layouts, provision.placements)
        for proc in specs:
            self.processes[proc.name] = _Process(
                proc, provision.hosts[proc.name], self.log_dir / f"{proc.name}.log",
                env={**proc.env, SESSION_ENV: spec.session,
                     "HSTREAM_CONFORMANCE_CLUSTER": spec.label},
            )
            if spec.clock_faults and proc.role == "node":
                from harness.clocklayer import ensure_library_here, layer_env, spec_path

                if spec.backend == "local":
                    # Installed on first use where we may; else refusal("clock") says how.
                    with contextlib.suppress(HarnessError):
                        ensure_library_here(self.progress)
                box = self.processes[proc.name]
                box.env.update(layer_env(spec_path(box.host, self.runtime, proc.name)))
        self._add_node_handles(specs, provision.placements)
        # Processes of one role start together (the nodes wait for each other anyway);
        # roles start in layout order, each group ready before the next begins.
        for group in _consecutive_roles([p for p in specs if not p.deferred]):
            boxes = [self.processes[p.name] for p in group]
            with ThreadPoolExecutor(max_workers=min(8, len(boxes))) as pool:
                list(pool.map(self._spawn, boxes))
            for box in boxes:
                self._await_ready(box)
        for step in steps:
            self._run_init_step(step)
        self._write_status()
        self.progress(f"cluster {spec.label} ready on {spec.backend}: "
                      + ", ".join(self.client_urls()))

    def _add_node_handles(self, specs: Sequence[ProcessSpec],
                          placements: Mapping[str, Placement]) -> None:
        """A NodeHandle for every server process, addressed as its placement advertises it."""
        for proc in specs:
            if proc.role != "node" or proc.node_id is None:
                continue
            at = placements[proc.name]
            self.nodes.append(NodeHandle(
                id=proc.node_id,
                name=proc.name,
                client=at.advertised["client"],
                gossip=at.advertised["gossip"],
                direct_client=at.direct(proc.ports["client"]),
                direct_gossip=at.direct(proc.ports["gossip"]),
                host=self.processes[proc.name].host.name,
                log_path=self.processes[proc.name].log_path,
                state="pending" if proc.deferred else "stopped",
            ))

    def _spawn(self, box: _Process) -> None:
        box.ready_lines = len(re.findall(box.spec.ready_log, self._log_text(box))) \
            if box.handle is not None and box.spec.ready_log else 0
        try:
            box.handle = box.host.spawn(box.spec, box.env, box.log_path)
        except HarnessError as exc:
            raise ClusterStartError(f"cannot start {box.spec.name} on {box.host.name}: {exc}") \
                from None
        box.state = "running"
        self._sync_node_handle(box)

    def _log_text(self, box: _Process) -> str:
        if box.handle is None:
            return ""
        try:
            return box.host.read_log(box.handle)
        except HarnessError:
            return box.log_path.read_text(errors="replace") if box.log_path.exists() else ""

    def _await_ready(self, box: _Process) -> None:
        spec = box.spec
        assert box.handle is not None
        self.progress(f"starting {spec.name} on {box.host.name} ... waiting for "
                      f"'{spec.waiting_for}'")
        pattern = re.compile(spec.ready_log)
        began = time.monotonic()
        deadline = began + spec.ready_timeout_s
        while True:
            text = self._log_text(box)
            if len(pattern.findall(text)) > box.ready_lines:
                self.progress(f"  {spec.name} ready in {time.monotonic() - began:.1f}s "
                              f"({box.host.name}, log {box.log_path})")
                return
            code = box.host.exit_status(box.handle)
            if code is not None:
                raise ClusterStartError(
                    f"{spec.name} exited with status {code} before logging "
                    f"{spec.waiting_for!r} (host {box.host.name}); last log lines:\n{_tail(text)}\n"
                    f"full log: {box.log_path}")
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{spec.name} did not log {spec.waiting_for!r} within "
                    f"{spec.ready_timeout_s:.0f}s (host {box.host.name}); last log lines:\n"
                    f"{_tail(text)}\n"
                    f"full log: {box.log_path}")
            time.sleep(0.05)

    def _run_init_step(self, step: InitStep, watch: _Process | None = None) -> None:
        """Run a target's init step until its output matches, within the step's deadline.

        With `watch`, a process whose exit ends the wait at once (a real server refused by
        its peers exits after printing its ready line).
        """
        self.progress(f"init: {step.description}")
        pattern = re.compile(step.expect) if step.expect else None
        deadline = time.monotonic() + step.timeout_s
        attempts = 0
        while True:
            attempts += 1
            code, output = self.runtime.run_init(step, max(1.0, deadline - time.monotonic()))
            if code == 0 and (pattern is None or pattern.search(output)):
                return
            if watch is not None and watch.handle is not None:
                status = watch.host.exit_status(watch.handle)
                if status is not None:
                    watch.state = "killed"
                    self._sync_node_handle(watch)
                    raise ClusterStartError(
                        f"{watch.spec.name} exited with status {status} while waiting for "
                        f"'{step.description}'; last log lines:\n"
                        f"{_tail(self._log_text(watch))}\nfull log: {watch.log_path}")
            if time.monotonic() + step.retry_interval_s > deadline:
                raise ClusterStartError(
                    f"init step '{step.description}' did not succeed within "
                    f"{step.timeout_s:.0f}s ({attempts} attempts); expected output matching "
                    f"{step.expect!r}, last output: {output!r}; command: "
                    f"{' '.join(step.argv)}; node logs: {self.log_dir}")
            time.sleep(step.retry_interval_s)

    # -- Toxiproxy -------------------------------------------------------------------
    def _start_toxiproxy(self) -> None:
        from harness.faults.toxiproxy import ToxiproxyError, connect_toxiproxy

        assert self.provision is not None and self.provision.toxiproxy is not None
        site = self.provision.toxiproxy
        self.toxiproxy_url = site.api_url.rstrip("/")
        if site.host is not None and site.spec is not None:
            box = _Process(site.spec, site.host, self.log_dir / "toxiproxy.log",
                           env={SESSION_ENV: self.spec.session,
                                "HSTREAM_CONFORMANCE_CLUSTER": self.spec.label})
            self._toxiproxy = box
            self._spawn(box)
            what = f"toxiproxy on {site.host.name}"
        else:
            what = "the given Toxiproxy (--toxiproxy-url)"
        self.progress(f"  waiting for {what} to answer {self.toxiproxy_url}/version")
        deadline = time.monotonic() + 20.0
        last = ""
        while time.monotonic() < deadline:
            if self._toxiproxy is not None:
                assert self._toxiproxy.handle is not None
                code = self._toxiproxy.host.exit_status(self._toxiproxy.handle)
                if code is not None:
                    raise ClusterStartError(
                        f"{what} exited with status {code}; last log lines:\n"
                        f"{_tail(self._log_text(self._toxiproxy))}\n"
                        f"full log: {self._toxiproxy.log_path}")
            try:
                handle = connect_toxiproxy(self.toxiproxy_url)
            except ToxiproxyError as exc:
                last = str(exc)
                time.sleep(0.1)
                continue
            self.extra["toxiproxy"] = {"kind": handle.kind, "version": handle.version,
                                       "api_url": self.toxiproxy_url,
                                       "host": site.host.name if site.host else "external"}
            return
        raise ClusterStartError(f"{what} did not answer {self.toxiproxy_url}/version within "
                                f"20s ({last})")

    def _create_proxies(self, layouts: Sequence[Any],
                        placements: Mapping[str, Placement]) -> None:
        from harness.faults.toxiproxy import connect_toxiproxy

        assert self.toxiproxy_url and self.provision and self.provision.toxiproxy
        site = self.provision.toxiproxy
        handle = connect_toxiproxy(self.toxiproxy_url)
        external = site.host is None
        for layout in layouts:
            at = placements[layout.name]
            for port_name in layout.proxied:
                name = f"{self.spec.label}-{layout.name}-{port_name}"
                upstream = at.direct(layout.ports[port_name])
                handle.create_proxy(name, str(site.listen[(layout.name, port_name)]),
                                    str(upstream))
                self.proxies[(layout.name, port_name)] = ProxyInfo(
                    name, at.advertised[port_name], upstream, self.toxiproxy_url)
        if external:
            self.record.update_meta(external_proxies=[
                {"api_url": self.toxiproxy_url, "name": p.name} for p in self.proxies.values()])

    # -- handles -------------------------------------------------------------------
    def _sync_node_handle(self, box: _Process) -> None:
        for node in self.nodes:
            if node.name == box.spec.name:
                node.state = box.state
                facts = box.handle.facts if box.handle else {}
                node.pid = facts.get("pid")
                node.container_id = facts.get("container_id")

    def _node_process(self, n: int) -> _Process:
        return self.processes[self.node(n).name]

    def _store(self) -> _Process | None:
        for box in self.processes.values():
            if box.spec.role == "store":
                return box
        return None

    def _write_status(self) -> None:
        self.extra["logs_dir"] = str(self.log_dir)
        self.extra["processes"] = {
            name: {"host": box.host.name, "state": box.state,
                   **(box.handle.facts if box.handle else {})}
            for name, box in self.processes.items()
        }
        self.record.update_meta(status=self.status())

    # -- process control (the nemesis' means; suites go through the nemesis) -----------
    def _kill(self, box: _Process) -> None:
        if box.handle is not None and box.host.exit_status(box.handle) is None:
            box.host.signal(box.handle, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT_S
            while box.host.exit_status(box.handle) is None:
                if time.monotonic() > deadline:
                    raise HarnessError(f"{box.spec.name} on {box.host.name} did not die within "
                                       f"{KILL_WAIT_S:.0f}s of SIGKILL")
                time.sleep(0.05)
        box.state = "killed"
        self._sync_node_handle(box)
        self._write_status()

    def _target_steps(self, hook: str, box: _Process) -> list[InitStep]:
        """A target's optional steps around a node's (re)start after bring-up: `before_restart`
        (e.g. wait until peers confirmed the old incarnation dead, or a real server refuses
        the new one) and `after_start` (e.g. ask the node whether it is really ready)."""
        steps = getattr(self.target, hook, None)
        if steps is None or box.spec.node_id is None or self.provision is None:
            return []
        return list(steps(self.spec, self.provision.placements, box.spec.node_id))

    def _restart(self, box: _Process) -> None:
        if box.handle is not None:
            self._kill(box)
            for step in self._target_steps("before_restart", box):
                self._run_init_step(step)
            self.progress(f"restarting {box.spec.name} (same host, same address)")
        self._spawn(box)
        # A fresh network namespace (a restarted container) has no rules: the grudge in
        # force must be reloaded before the node talks to anyone.
        net = self.provision.net if self.provision else None
        if net is not None and box.spec.node_id is not None and self._partition:
            net.reload(box.spec.node_id)
        self._await_ready(box)
        for step in self._target_steps("after_start", box):
            self._run_init_step(step, watch=box)
        self._write_status()

    def _signal_running(self, box: _Process, sig: signal.Signals, state: str) -> None:
        if box.handle is None or box.host.exit_status(box.handle) is not None:
            raise HarnessError(f"{box.spec.name} is not running (state {box.state})")
        box.host.signal(box.handle, sig)
        box.state = state
        self._sync_node_handle(box)
        self._write_status()

    def kill(self, n: int) -> None:
        """SIGKILL node n (no graceful shutdown)."""
        self._require("signal")
        self._kill(self._node_process(n))

    def pause(self, n: int) -> None:
        """SIGSTOP node n: its sockets stay open but it answers nothing."""
        self._require("pause")
        self._signal_running(self._node_process(n), signal.SIGSTOP, "paused")

    def resume(self, n: int) -> None:
        """SIGCONT a paused node."""
        self._require("pause")
        self._signal_running(self._node_process(n), signal.SIGCONT, "running")

    def stop_node(self, n: int, grace_s: float = GRACEFUL_STOP_S, wait: bool = True) -> None:
        """SIGTERM node n, as an operator stops a server: a graceful stop, in which the
        server may tell its peers it leaves. With `wait`, returns once it has exited
        (`wait_stopped`); else as soon as the signal is sent. `restart(n)` starts it again."""
        self._require("signal")
        box = self._node_process(n)
        if box.handle is None or box.host.exit_status(box.handle) is not None:
            raise HarnessError(f"{box.spec.name} is not running (state {box.state})")
        box.host.signal(box.handle, signal.SIGTERM)
        box.state = "stopped"
        self._sync_node_handle(box)
        if wait:
            self.wait_stopped(n, grace_s)

    def wait_stopped(self, n: int, grace_s: float = GRACEFUL_STOP_S) -> None:
        """Wait until node n, sent SIGTERM by `stop_node`, has exited; SIGKILL it if it
        still runs after `grace_s`."""
        box = self._node_process(n)
        if box.handle is None:
            return
        deadline = time.monotonic() + grace_s
        while box.host.exit_status(box.handle) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if box.host.exit_status(box.handle) is None:
            self.progress(f"{box.spec.name} still ran {grace_s:g}s after SIGTERM; SIGKILL")
        self._kill(box)
        box.state = "stopped"
        self._sync_node_handle(box)
        self._write_status()

    def restart(self, n: int) -> None:
        """(Re)start node n with the same id, ports and flags; kills it first if running.

        Returns once its readiness log line appears again; on a late node not started yet
        it starts it the first time (what `join` does).
        """
        self._require("signal")
        self._restart(self._node_process(n))

    def join(self, n: int) -> None:
        """Start late node n (`ClusterSpec.late_nodes`) for the first time: a brand-new
        server that joins the running cluster through its seeds. Returns once it is ready.
        """
        node = self.node(n)
        if node.state != "pending":
            raise HarnessError(
                f"node {n} is not a late node waiting to join (state {node.state}); late "
                f"nodes of this cluster: {', '.join(map(str, self.spec.late_node_ids)) or 'none'}"
            )
        self.progress(f"node {n} joins the running cluster")
        self._restart(self._node_process(n))

    def kill_store(self) -> None:
        """SIGKILL the store process."""
        self._require("store")
        store = self._store()
        assert store is not None
        self._kill(store)

    def restart_store(self) -> None:
        """(Re)start the store with the same data directory; returns when it is ready."""
        self._require("store")
        store = self._store()
        assert store is not None
        self._restart(store)

    def disk_control(self) -> DiskControl:
        """The control channel of the lazy disk under the store (harness.lazydisk)."""
        self._require("disk")
        from harness.lazydisk.control import DiskControl
        from harness.targets.reference import disk_control_path

        assert self.provision is not None
        path = disk_control_path(self.provision.placements["disk"].volumes)
        if self.spec.backend == "local":
            return DiskControl(path)
        # Elsewhere the socket is inside the disk's host (a container): asked through it.
        return DiskControl(path, via=self.processes["disk"].host.exec)

    def partition(self, grudge: Grudge) -> None:
        """Apply a grudge (node -> nodes whose traffic it drops), replacing any earlier one.

        A node whose host cannot run anything now (a killed container) gets it on restart.
        """
        self._require("partition")
        assert self.provision is not None and self.provision.net is not None
        normalized = normalize(grudge, [node.id for node in self.nodes])
        self._partition = self.provision.net.partition(normalized)
        self.extra["partition"] = self._partition
        self.progress(f"partition: {self._partition['grudge']}")
        self._write_status()

    def heal(self) -> None:
        """Undo every partition (toxics are the nemesis' toxic family's to undo)."""
        if self._stopped:
            return
        net = self.provision.net if self.provision else None
        if net is not None:
            net.heal()
        self._partition = None
        self.extra.pop("partition", None)
        self._write_status()

    def reset_proxies(self) -> None:
        """Every proxy of this cluster enabled and without toxics (a shared external
        Toxiproxy may serve other clusters, so only ours, and no /reset)."""
        if not self.toxiproxy_url or not self.proxies or self._stopped:
            return
        from harness.faults.toxiproxy import connect_toxiproxy

        handle = connect_toxiproxy(self.toxiproxy_url)
        for info in self.proxies.values():
            handle.set_enabled(info.name, True)
            for toxic in handle.proxy(info.name).get("toxics") or []:
                handle.remove_toxic(info.name, toxic["name"])

    def partition_rules(self, n: int) -> list[str]:
        """The iptables rules now in node n's chains (evidence for reports)."""
        net = self.provision.net if self.provision else None
        rules_in = getattr(net, "rules_in", None)
        if rules_in is None:
            raise UnsupportedFault(self.refusal("partition") or "no partition means")
        return list(rules_in(n))

    def exec(self, name: str, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Runs argv on the host of process `name` ("node-1", "store", "toxiproxy")."""
        box = self.processes.get(name) or (self._toxiproxy if name == "toxiproxy" else None)
        if box is None:
            raise HarnessError(f"no process {name!r}; processes: {', '.join(self.processes)}")
        return box.host.exec(argv, timeout_s)

    # -- evidence and teardown -------------------------------------------------------
    def logs(self) -> dict[str, Path]:
        """Process name -> path of its log file, copied from its host now."""
        found: dict[str, Path] = {}
        boxes = [*self.processes.values(), *([self._toxiproxy] if self._toxiproxy else [])]
        for box in boxes:
            if box.handle is not None:
                self._log_text(box)
                found[box.spec.name] = box.log_path
        return found

    def status(self) -> dict[str, Any]:
        """JSON-ready description (what `cluster status --json` prints)."""
        return {
            "spec": self.spec.to_json(),
            "toxiproxy_url": self.toxiproxy_url,
            "nodes": [node.to_json() for node in self.nodes],
            "proxies": {
                f"{proc}/{port}": {"listen": str(p.listen), "upstream": str(p.upstream)}
                for (proc, port), p in self.proxies.items()
            },
            **self.extra,
        }

    def stop(self) -> None:
        """Stop and remove everything this cluster started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        untrack(self)
        with contextlib.suppress(Exception):
            self.logs()
        if self.toxiproxy_url and self._toxiproxy is None and self.proxies:
            from harness.faults.toxiproxy import ToxiproxyError, connect_toxiproxy

            with contextlib.suppress(ToxiproxyError):
                handle = connect_toxiproxy(self.toxiproxy_url)
                for info in self.proxies.values():
                    with contextlib.suppress(ToxiproxyError):
                        handle.delete_proxy(info.name)
        try:
            self.runtime.teardown()
        finally:
            for box in self.processes.values():
                if box.state != "pending":
                    box.state = "stopped"
                self._sync_node_handle(box)
            self.record.remove()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(spec: ClusterSpec, progress: Progress | None = None,
                  detached: bool = False) -> Cluster:
    """Start the spec's cluster and return once it is ready and initialised.

    `detached=True` (the `cluster up` command) leaves it running after this process exits:
    only `cluster down` removes it. Raises ClusterStartError (PortInUse, ImageMissing, ...)
    with nothing left running.
    """
    cluster = Cluster(spec, progress, detached)
    try:
        cluster._start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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

