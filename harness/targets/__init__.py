"""Targets: *what* runs on a cluster's nodes, with no knowledge of processes vs containers.

Starting a cluster is a three-step conversation between a target and a backend:

1. `target.layout(spec)` lists the processes in start order with the ports they listen on,
   which of those ports get a Toxiproxy proxy, and the volumes they need (`ProcessLayout`).
2. The backend decides where each one lives (`Placement`: bind address, the address others
   reach it by, the advertised endpoint of every port — a proxy's when proxied — and the
   path of every volume).
3. `target.processes(spec, placements)` returns the runnable `ProcessSpec`s (argv with the
   final addresses), and `target.init_steps(spec, placements)` the commands to run once every
   process is ready (e.g. `server init`), each retried until its output matches.

The backend starts the ProcessSpecs in order, waits for each one's readiness log line, then
runs the InitSteps. A `deferred` process (a late node, `ClusterSpec.late_nodes`) is placed,
proxied and port-checked like the others but started only when `Cluster.join(n)` asks.
Backends never look inside argv; targets never look at pids or containers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from harness import HarnessError
from harness.topology import ClusterSpec

if TYPE_CHECKING:
    from harness.targets.settings import TargetSettings

# "disk": the lazy disk under the store's data directory (harness.lazydisk), started first.
Role = Literal["node", "store", "metastore", "disk"]


class TargetError(HarnessError):
    """The target cannot run as asked (unknown target, defect, missing image...)."""


class ImageMissing(TargetError):
    """A container image the target needs is not present and cannot be pulled here.

    Raised by the backend before anything starts (the docker backend checks every
    `ProcessSpec.image`/`InitStep.image`; the local backend refuses any spec with an image).
    """

    def __init__(self, image: str, needed_by: str, hint: str = "") -> None:
        self.image = image
        self.needed_by = needed_by
        message = f"image {image!r} (needed by {needed_by}) is not present"
        super().__init__(f"{message}; {hint}" if hint else message)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProcessLayout:
    """A process before placement: its name, role, ports and needs."""

    name: str  # unique in the cluster: "store", "zookeeper", "node-1", ...
    role: Role
    ports: Mapping[str, int]  # port name ("client", "gossip", "store", ...) -> listening port
    proxied: tuple[str, ...] = ()  # port names to put behind Toxiproxy when the spec asks
    # volume name -> preferred mount path in a container; a volume name shared by several
    # processes is one shared volume (ld-dev-cluster writes logdevice.conf that servers read).
    volumes: Mapping[str, str] = field(default_factory=dict)
    node_id: int | None = None  # HServer id for role "node"
    deferred: bool = False  # a late node: not started at bring-up


@dataclass(frozen=True)
class Placement:
    """Where the backend put one process."""

    bind_host: str  # address the process binds to ("127.0.0.11" locally, "0.0.0.0" in docker)
    host: str  # address or hostname peers use to reach it directly (no proxy)
    advertised: Mapping[str, Endpoint]  # port name -> endpoint others must use (proxy if any)
    volumes: Mapping[str, str] = field(default_factory=dict)  # volume name -> path it sees

    def direct(self, port: int) -> Endpoint:
        return Endpoint(self.host, port)


@dataclass(frozen=True)
class ProcessSpec:
    """One runnable process: everything a backend needs to start it and know it is ready."""

    name: str
    role: Role
    # argv[0] == "python" with image None means: this repo's Python environment (the local
    # backend runs sys.executable; the docker backend runs the reference-server image).
    # Empty argv with an image: the image's own entrypoint and command.
    argv: tuple[str, ...]
    ports: Mapping[str, int]  # port name -> port it listens on (bound on Placement.bind_host)
    ready_log: str  # regex searched in the process's combined stdout/stderr
    image: str | None = None  # container image; None = the harness's own Python environment
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: Mapping[str, str] = field(default_factory=dict)  # volume name -> mount path
    proxied: tuple[str, ...] = ()
    node_id: int | None = None
    ready_timeout_s: float = 30.0
    deferred: bool = False  # a late node: started by Cluster.join(n), not at bring-up

    @property
    def waiting_for(self) -> str:
        """How progress output names what readiness waits for."""
        return re.sub(r"\\([^\w])", r"\1", self.ready_log.replace("\\b", ""))


@dataclass(frozen=True)
class InitStep:
    """A command run once after every process is ready; retried until `expect` matches.

    Runs as a one-off process in the harness's Python environment (image None) or in a
    container of `image` on the cluster's network.
    """

    description: str  # for progress and errors: "server init on node-1"
    argv: tuple[str, ...]
    expect: str = ""  # regex the combined output must match (empty: exit status 0 suffices)
    image: str | None = None
    timeout_s: float = 60.0  # overall deadline including retries
    retry_interval_s: float = 0.5


class Target(Protocol):
    """What runs on a cluster; see the module docstring for the protocol."""

    name: str

    def layout(self, spec: ClusterSpec) -> list[ProcessLayout]: ...

    def processes(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[ProcessSpec]: ...

    def init_steps(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[InitStep]: ...

    def settings(self, spec: ClusterSpec) -> TargetSettings:
        """What it runs with (gossip timings, confirmation rule, membership probe, known
        departures from the protocol): harness.targets.settings."""
        ...

    # Optional (looked up with getattr by the orchestration, harness.cluster):
    # before_restart(spec, placements, node_id) -> list[InitStep]: run after a node was
    #   killed and before it is started again (a real server refuses an incarnation its
    #   peers still hold alive);
    # after_start(spec, placements, node_id) -> list[InitStep]: run after a node started
    #   after bring-up (restart or join) logged its ready line.


def target_for(spec: ClusterSpec) -> Target:
    """The Target implementation for `spec.target` (validates target-specific settings)."""
    if spec.target_kind == "reference":
        from harness.targets.reference import ReferenceTarget

        return ReferenceTarget(spec)
    if spec.target_kind == "hstream":
        from harness.targets.hstream import HStreamTarget

        return HStreamTarget(spec)
    raise TargetError(f"unknown target {spec.target!r}; use 'reference' or 'hstream:<image>'")


def settings_for(spec: ClusterSpec) -> TargetSettings:
    """What the spec's target runs with (see harness.targets.settings)."""
    return target_for(spec).settings(spec)
