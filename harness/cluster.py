"""Backend and Cluster: *where* a cluster runs, behind one small interface (Jepsen's `db`).

`Backend.start(spec) -> Cluster` starts every process of the spec's target (see
harness.targets for the layout/placement/process conversation), waits until each is ready,
runs the target's init steps and returns a `Cluster` handle. Faults and clients only use the
handle, so a suite runs unchanged on the local and the docker backend.

A backend implementation provides `Backend.start` and the `Cluster` primitives marked
abstract; node numbers `n` are HServer ids (1..spec.nodes).
"""

from __future__ import annotations

import abc
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import HarnessError
from harness.targets import Endpoint, InitStep, Placement, ProcessSpec
from harness.topology import SESSION_ENV, ClusterSpec

if TYPE_CHECKING:
    from harness.faults.partition import Grudge


class ClusterStartError(HarnessError):
    """A cluster failed to start; the message names the process, what it waited for, and logs.

    Everything started before the failure has been stopped when this is raised.
    """


class PortInUse(ClusterStartError):
    def __init__(self, endpoint: Endpoint, owner: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"port {endpoint} ({owner}) is already in use; stop what holds it "
            "(`hstream-conformance cluster down`, or find it with `ss -ltnp`) or choose "
            "another base port (--base-port / [cluster] base_port)"
        )


class UnsupportedFault(HarnessError):
    """The backend cannot apply this fault truthfully; the message says which backend can."""


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
    log_path: Path | None = None
    pid: int | None = None  # local backend
    container_id: str | None = None  # docker backend
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
            "log": str(self.log_path) if self.log_path else None,
            "pid": self.pid,
            "container_id": self.container_id,
            "state": self.state,
        }


@dataclass(frozen=True)
class ProxyInfo:
    """A Toxiproxy proxy in front of one port of one process."""

    name: str  # Toxiproxy proxy name, e.g. "c0-node-1-client"
    listen: Endpoint
    upstream: Endpoint
    api_url: str  # the Toxiproxy REST API that owns it

    def handle(self) -> Any:
        """The `toxiproxy-python` Proxy object (add_toxic / disable / enable / destroy_toxic)."""
        from toxiproxy.server import Toxiproxy

        api = self.api_url.rstrip("/").rsplit("/", 1)[-1]
        host, _, port = api.rpartition(":")
        server = Toxiproxy()
        server.update_api_consumer(host, int(port))
        proxy = server.get_proxy(self.name)
        if proxy is None:
            raise HarnessError(f"proxy {self.name} no longer exists on {self.api_url}")
        return proxy


class Cluster(abc.ABC):
    """A running cluster. `stop()` is idempotent and is also run on Ctrl-C / SIGTERM."""

    spec: ClusterSpec
    nodes: list[NodeHandle]
    toxiproxy_url: str | None
    proxies: dict[tuple[str, str], ProxyInfo]  # (process name, port name) -> proxy
    extra: dict[str, Any]  # backend-specific facts for status output (store pid, network...)

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.nodes = []
        self.toxiproxy_url = None
        self.proxies = {}
        self.extra = {}

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
        self.restart(n)

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

    # -- what every backend does the same way ---------------------------------------
    progress: Callable[[str], None]
    log_dir: Path

    def _add_node_handles(
        self,
        specs: Sequence[ProcessSpec],
        placements: Mapping[str, Placement],
        log_path_of: Callable[[str], Path],
    ) -> None:
        """A NodeHandle for every server process, addressed as its placement advertises it."""
        for proc in specs:
            if proc.role != "node" or proc.node_id is None:
                continue
            at = placements[proc.name]
            self.nodes.append(
                NodeHandle(
                    id=proc.node_id,
                    name=proc.name,
                    client=at.advertised["client"],
                    gossip=at.advertised["gossip"],
                    direct_client=at.direct(proc.ports["client"]),
                    direct_gossip=at.direct(proc.ports["gossip"]),
                    log_path=log_path_of(proc.name),
                    state="pending" if proc.deferred else "stopped",
                )
            )

    def _run_init_step(self, step: InitStep) -> None:
        """Run a target's init step until its output matches, within the step's deadline."""
        self.progress(f"init: {step.description}")
        pattern = re.compile(step.expect) if step.expect else None
        deadline = time.monotonic() + step.timeout_s
        attempts = 0
        while True:
            attempts += 1
            code, output = self._run_init_once(step, max(1.0, deadline - time.monotonic()))
            if code == 0 and (pattern is None or pattern.search(output)):
                return
            if time.monotonic() + step.retry_interval_s > deadline:
                raise ClusterStartError(
                    f"init step '{step.description}' did not succeed within "
                    f"{step.timeout_s:.0f}s ({attempts} attempts); expected output matching "
                    f"{step.expect!r}, last output: {output!r}; command: "
                    f"{' '.join(step.argv)}; node logs: {self.log_dir}"
                )
            time.sleep(step.retry_interval_s)

    def _run_init_once(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        """One attempt, on the host with the harness's own Python: (exit code, output)."""
        argv = list(step.argv)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, SESSION_ENV: self.spec.session},
            )
        except subprocess.TimeoutExpired:
            return 1, "(timed out)"
        return done.returncode, (done.stdout + done.stderr).strip()

    # -- what this cluster's runtime can do ---------------------------------------
    # Means a fault may need: "signal" (kill/restart a process), "pause" (SIGSTOP/SIGCONT),
    # "store" (kill/restart the store), "partition" (cut links between nodes),
    # "toxiproxy" (proxies in front of ports), "join" (late nodes to start).
    MEANS = ("signal", "pause", "store", "partition", "toxiproxy", "join")

    def refusal(self, means: str) -> str | None:
        """Why this cluster cannot provide `means` (one line saying what to do), or None."""
        if means not in self.MEANS:
            return f"unknown means {means!r}; known: {', '.join(self.MEANS)}"
        if means == "toxiproxy" and not self.toxiproxy_url:
            return (
                "this cluster runs without Toxiproxy (--no-toxiproxy); start it with proxies "
                "to inject link faults"
            )
        if means == "store" and not any(layout == "store" for layout in self._roles()):
            return "this cluster has no store process of ours (the target manages its own)"
        if means == "join" and not self.spec.late_node_ids:
            return "this cluster has no late nodes; set late_nodes in its spec"
        return self._runtime_refusal(means)

    def _roles(self) -> list[str]:
        return ["store"]

    def _runtime_refusal(self, means: str) -> str | None:
        return None

    # -- process faults -------------------------------------------------------------
    @abc.abstractmethod
    def kill(self, n: int) -> None:
        """SIGKILL node n (no graceful shutdown)."""

    @abc.abstractmethod
    def pause(self, n: int) -> None:
        """SIGSTOP node n: its sockets stay open but it answers nothing."""

    @abc.abstractmethod
    def resume(self, n: int) -> None:
        """SIGCONT a paused node."""

    @abc.abstractmethod
    def restart(self, n: int) -> None:
        """(Re)start node n with the same id, ports and flags; kills it first if running.

        Returns once its readiness log line appears again. On a late node not started yet
        it starts it the first time (what `join` does).
        """

    @abc.abstractmethod
    def kill_store(self) -> None:
        """SIGKILL the store process."""

    @abc.abstractmethod
    def restart_store(self) -> None:
        """(Re)start the store with the same data directory; returns when it is ready."""

    # -- network faults --------------------------------------------------------------
    @abc.abstractmethod
    def partition(self, grudge: Grudge) -> None:
        """Apply a grudge (node -> nodes whose traffic it drops), replacing any earlier one."""

    @abc.abstractmethod
    def heal(self) -> None:
        """Undo every partition (and re-enable every proxy)."""

    # -- evidence and teardown -------------------------------------------------------
    @abc.abstractmethod
    def logs(self) -> Mapping[str, Path]:
        """Process name -> path of its log file (containers' logs are copied to files)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop and remove everything this cluster started. Idempotent."""

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

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Backend(abc.ABC):
    """Starts clusters of a ClusterSpec on one kind of infrastructure.

    Constructor contract (so `backend_for` can build any backend):
    `Backend(progress: Callable[[str], None] | None = None, detached: bool = False)`.
    `progress` receives one line per step ("starting node-2 ... waiting for '...'"); None
    prints to stderr. `detached=True` (the `cluster up` command) leaves the cluster running
    after this process exits: no exit/signal teardown, and the cluster's ClusterRecord
    (harness.cleanup) is marked detached so only `cluster down` removes it.
    """

    name: str = ""

    @abc.abstractmethod
    def start(self, spec: ClusterSpec) -> Cluster:
        """Start the spec's cluster and return once it is ready and initialised.

        Raises ClusterStartError (PortInUse, ImageMissing from harness.targets, ...) with
        nothing left running.
        """


def backend_for(
    spec: ClusterSpec, progress: Callable[[str], None] | None = None, detached: bool = False
) -> Backend:
    """The Backend implementation named by `spec.backend`."""
    if spec.backend == "local":
        from harness.backends.local import LocalBackend

        return LocalBackend(progress=progress, detached=detached)
    if spec.backend == "docker":
        try:
            from harness.backends.docker import DockerBackend
        except ImportError as exc:
            raise HarnessError(f"the docker backend is not available: {exc}") from None
        return DockerBackend(progress=progress, detached=detached)  # type: ignore[call-arg]
    raise HarnessError(f"unknown backend {spec.backend!r}; use local or docker")
