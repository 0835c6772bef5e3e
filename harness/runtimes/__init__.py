"""Runtimes: *where* a cluster's processes run, behind two small protocols.

A `Host` is one place a process can run (this machine, a container, a machine reached over
SSH): it spawns a `ProcessSpec`, signals what it spawned, runs a command, reads a process's
log and receives files. A `Runtime` provisions the Hosts for a target's layout, says where
every process is reached (`Placement`, proxies included), which means of fault injection it
has (`net`: cutting links between nodes), tears down what it provisioned and sweeps what a
killed run left behind.

Everything else — the conversation with the target, readiness, init steps, Toxiproxy,
status, process faults — is written once, over these protocols, in `harness.cluster`.

Runtimes are registered as entry points in the group `hstream_conformance.runtimes`
(`name = "package.module:RuntimeClass"`), so a user's package adds one without editing ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from harness import HarnessError
from harness.targets import Endpoint, InitStep, Placement, ProcessLayout, ProcessSpec
from harness.topology import SESSION_ENV, ClusterSpec

if TYPE_CHECKING:
    from harness.cleanup import ClusterRecord

ENTRY_POINT_GROUP = "hstream_conformance.runtimes"

Progress = Callable[[str], None]


class HostDown(HarnessError):
    """The host cannot run anything right now (a stopped container, an unreachable machine)."""


class ExecOutputLost(HarnessError):
    """A command's output did not come back whole, so neither it nor the exit status can be
    trusted; the command may or may not have run. A docker engine under load now and then
    ends an exec with exit 0 and nothing read. Only a command that is safe to run twice is
    asked again (`exec_retrying`)."""


# A lost output has come back on the next exec every time it was seen; three tries bound
# the cost of an engine that keeps losing them.
EXEC_ATTEMPTS = 3
_T = TypeVar("_T")


def retrying_lost_output(call: Callable[[], _T]) -> _T:
    """call(), asked again when an exec in it lost its output (ExecOutputLost), up to
    EXEC_ATTEMPTS times in all. Only for calls that are safe to run twice: reads, and
    writes of a whole state."""
    for _ in range(EXEC_ATTEMPTS - 1):
        with contextlib.suppress(ExecOutputLost):
            return call()
    return call()


def exec_retrying(host: Any, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
    """`host.exec` of an idempotent command, asked again when its output was lost."""
    return retrying_lost_output(lambda: cast("tuple[int, str]", host.exec(argv, timeout_s)))


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


@dataclass
class ProcHandle:
    """One spawned incarnation of a process on a host."""

    name: str  # the process name ("node-1", "store", "toxiproxy")
    host: str  # the Host's name
    ref: str  # what the host knows it by: a pid, a container id
    log_path: Path  # the local copy of its log (evidence; refreshed by Host.read_log)
    facts: dict[str, Any] = field(default_factory=dict)  # for status output (pid, container)


class Host(Protocol):
    """One machine (or container) processes run on."""

    name: str

    def spawn(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> ProcHandle:
        """Start `spec` (argv, env, volumes as placed) with its output appended to its log.

        Spawning a process the host ran before starts a new incarnation with the same
        identity (same address, same volumes); its log continues the old one.
        """
        ...

    def signal(self, handle: ProcHandle, sig: signal.Signals) -> None:
        """Send `sig` to the process (and everything it started)."""
        ...

    def exit_status(self, handle: ProcHandle) -> int | None:
        """None while the process runs (paused counts as running), else its exit status."""
        ...

    def exec(self, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a command on the host (in its network namespace): (exit status, output).

        Raises HostDown when the host cannot run anything now, and ExecOutputLost when the
        output did not come back whole (see `exec_retrying`).
        """
        ...

    def read_log(self, handle: ProcHandle) -> str:
        """The process's whole log (every incarnation), also copied to `handle.log_path`."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to `remote` on the host."""
        ...


class Net(Protocol):
    """A runtime's means to cut links between nodes (see harness.faults.iptables)."""

    def partition(self, grudge: Mapping[int, frozenset[int]]) -> dict[str, Any]:
        """Apply a grudge on every node's host, replacing any earlier one; returns evidence."""
        ...

    def reload(self, node_id: int) -> None:
        """A node's host came back (restart): load the grudge in force into it."""
        ...

    def heal(self) -> None:
        """Remove every partition rule."""
        ...


@dataclass
class ToxiproxySite:
    """Where the cluster's Toxiproxy runs and how it is reached.

    `host`/`spec` None: an external Toxiproxy the user runs (`api_url` given); otherwise the
    orchestration spawns `spec` on `host`. `listen` maps (process, port name) to the address
    a proxy is created to listen on (what Toxiproxy binds; clients use the placement's
    advertised endpoint, which may differ, e.g. 0.0.0.0:20001 vs 172.28.3.2:20001).
    """

    api_url: str
    listen: Mapping[tuple[str, str], Endpoint]
    host: Host | None = None
    spec: ProcessSpec | None = None


@dataclass
class Provision:
    """What a runtime provisioned for one cluster."""

    placements: dict[str, Placement]  # process name -> where it is reached
    hosts: dict[str, Host]  # process name -> the Host it runs on
    toxiproxy: ToxiproxySite | None = None  # None when the spec runs without proxies
    net: Net | None = None  # None: no partitions (refusal() says why)
    facts: dict[str, Any] = field(default_factory=dict)  # for status output (network, hosts)


class Runtime(Protocol):
    """Provisions hosts for one cluster; see the module docstring.

    Constructor contract (so `runtime_for` can build any runtime):
    `Runtime(spec: ClusterSpec, progress: Progress, record: ClusterRecord)`; the record
    (harness.cleanup) is where it notes what a sweep must find if this run is killed.
    """

    name: str

    def provision(self, layouts: Sequence[ProcessLayout]) -> Provision:
        """Hosts and addresses for every process of the layout (nothing started yet).

        Raises a HarnessError naming what to fix (port in use, no engine, unreachable host)
        with everything it made removed.
        """
        ...

    def check(self, specs: Sequence[ProcessSpec], steps: Sequence[InitStep]) -> None:
        """Refuse, before anything starts, what this runtime cannot run (images, ports)."""
        ...

    def run_init(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        """Run one attempt of an init step: (exit status, output)."""
        ...

    def refusal(self, means: str) -> str | None:
        """Why this runtime lacks a fault means ("partition", "pause", ...), or None."""
        ...

    def teardown(self) -> None:
        """Remove every host, network and file this runtime provisioned. Idempotent."""
        ...


class SweepableRuntime(Protocol):
    """A runtime class that can remove what a dead run left (called with cluster labels and
    the records' metadata)."""

    @staticmethod
    def sweep(labels: list[str], metas: list[dict[str, Any]]) -> None: ...


def proxy_listen_ports(layouts: Sequence[ProcessLayout], first: int
                       ) -> dict[tuple[str, str], int]:
    """Ports for proxies that all listen on one address (a Toxiproxy container or host).

    When every proxied port number of the cluster is distinct, each proxy listens on its
    upstream's own number: a server that can only advertise the port it listens on (real
    hstream-server has no advertised-port option) is then reachable through its proxy.
    Otherwise (every reference node listens on the same port) proxies take first, first+1,
    ... in layout order.
    """
    wanted = [(layout.name, port_name, layout.ports[port_name])
              for layout in layouts for port_name in layout.proxied]
    numbers = [port for _, _, port in wanted]
    if len(set(numbers)) == len(numbers):
        return {(name, port_name): port for name, port_name, port in wanted}
    return {(name, port_name): first + k for k, (name, port_name, _) in enumerate(wanted)}


def runtime_names() -> list[str]:
    """The names of every registered runtime."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def runtime_class(name: str) -> Any:
    """The Runtime class registered as `name`; a clear error for an unknown name."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as exc:
                raise HarnessError(f"the {name} runtime cannot be loaded: {exc}") from None
    known = ", ".join(runtime_names()) or "none (is the package installed? pip install -e .)"
    raise HarnessError(f"unknown backend {name!r}; registered runtimes: {known}")


def runtime_for(spec: ClusterSpec, progress: Progress, record: ClusterRecord) -> Runtime:
    """The Runtime for `spec.backend`, constructed for this cluster."""
    cls = runtime_class(spec.backend)
    runtime: Runtime = cls(spec, progress, record)
    return runtime


def run_here(step: InitStep, timeout_s: float, session: str) -> tuple[int, str]:
    """One attempt of an init step on the control machine, with the harness's own Python
    (`python` in argv): the reference target's init talks to nodes over the network."""
    argv = list(step.argv)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, SESSION_ENV: session})
    except subprocess.TimeoutExpired:
        return 1, "(timed out)"
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


__all__ = [
    "ENTRY_POINT_GROUP",
    "Host",
    "ExecOutputLost",
    "HostDown",
    "Net",
    "ProcHandle",
    "Progress",
    "Provision",
    "Runtime",
    "ClusterStartError",
    "PortInUse",
    "ToxiproxySite",
    "exec_retrying",
    "retrying_lost_output",
    "proxy_listen_ports",
    "runtime_class",
    "runtime_for",
    "runtime_names",
    "run_here",
]
