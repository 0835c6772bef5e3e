"""The `reference` target: the repo's reference HServer, one store process + N server nodes.

Flags mirror hstream-server (`--server-id --port --internal-port --bind-address
--advertised-address --seed-nodes ...`), so the topology code is the same for both targets.
Every node started at bring-up is a seed, as in the known-good HStreamDB setups, so the
cluster waits for `server init` (sent to node 1) before it serves. Late nodes
(`ClusterSpec.late_nodes`) get the same seed list but are not seeds themselves: started
later, they join the running cluster through it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from harness.targets import InitStep, Placement, ProcessLayout, ProcessSpec, TargetError
from harness.targets.settings import TargetSettings
from harness.topology import ClusterSpec

STORE = "store"
DISK = "disk"
DISK_READY = r"lazydisk is mounted at"


def node_name(node_id: int) -> str:
    return f"node-{node_id}"


# What a loaded 2-core machine adds to a restart rule's protocol bound.
RESTART_SLACK_S = 10.0
# Generous: it is one interpreter start and a few imports, but the machine may be busy.
LIST_DEFECTS_TIMEOUT = 60.0


@functools.cache
def _known_defects() -> frozenset[str]:
    """The names the reference server's `--defect` accepts, as the server itself lists them.

    The harness treats every target as a black box, so it asks the server (in the
    interpreter that runs it on the local backend) instead of importing its catalogue;
    asking once per process keeps pytest_configure fast. A typo then fails before anything
    starts.
    """
    argv = [python_executable(), "-m", "refserver", "--list-defects"]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=LIST_DEFECTS_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TargetError(
            f"cannot ask the reference server which defects it knows ({' '.join(argv)}): {error}"
        ) from None
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetError(
            f"cannot ask the reference server which defects it knows: `{' '.join(argv)}` "
            f"exited {result.returncode}: {last_line}"
        )
    return frozenset(result.stdout.split())


class ReferenceTarget:
    name = "reference"

    def __init__(self, spec: ClusterSpec) -> None:
        # Only a spec naming defects pays for the subprocess.
        known = _known_defects() if spec.defects else frozenset()
        unknown = sorted(set(spec.defects) - known)
        if unknown:
            raise TargetError(
                f"unknown defect {', '.join(unknown)}; the reference server knows: "
                f"{', '.join(sorted(known))}"
            )
        self.spec = spec
        if spec.profile != "protocol":
            self.settings(spec)  # an unknown profile fails here, before anything starts

    def settings(self, spec: ClusterSpec) -> TargetSettings:
        """What its servers run with, as the reference server itself reports it for this
        profile and these gossip flags (its defaults overridden by what it was given)."""
        return TargetSettings.from_report(
            "reference", f"profile {spec.profile}", tunable=True,
            report=_settings_report(spec.profile, _gossip_flags(spec)))

    def layout(self, spec: ClusterSpec) -> list[ProcessLayout]:
        store = ProcessLayout(
            name=STORE,
            role="store",
            ports={"store": spec.store_port},
            # A proxy in front of the store lets a nemesis cut every server off from it.
            proxied=("store",),
            volumes={"store-data": "/data/store"},
        )
        nodes = [
            ProcessLayout(
                name=node_name(i),
                role="node",
                ports={"client": spec.client_port, "gossip": spec.gossip_port},
                proxied=("client", "gossip"),
                node_id=i,
                deferred=i in spec.late_node_ids,
            )
            for i in spec.all_node_ids
        ]
        return [*self._disk_layout(spec), store, *nodes]

    def _disk_layout(self, spec: ClusterSpec) -> list[ProcessLayout]:
        """The lazy disk mounted over the store's data volume, backed by a volume of its own;
        only for a spec with disk faults on a backend where one process's mount is the
        store's (the local one; docker runs the store in the disk's container), and where
        FUSE is (else `Cluster.refusal("disk")` says why).
        """
        if not spec.disk_faults or disk_refusal(spec) is not None:
            return []
        return [ProcessLayout(name=DISK, role="disk", ports={}, volumes=dict(DISK_VOLUMES))]

    def processes(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[ProcessSpec]:
        store_at = placements[STORE]
        store = ProcessSpec(
            name=STORE,
            role="store",
            argv=(
                "python", "-m", "refserver.store",
                "--data-dir", store_at.volumes["store-data"],
                "--port", str(spec.store_port),
                "--bind-address", store_at.bind_host,
                # The store acts on its own defects (fsync-lie) and accepts the others.
                *(arg for defect in spec.defects for arg in ("--defect", defect)),
            ),
            ports={"store": spec.store_port},
            ready_log=rf"Store is started on port {spec.store_port}\b",
            env=_python_env(),
            volumes={"store-data": "/data/store"},
            proxied=("store",),
        )
        seeds = ",".join(
            str(placements[node_name(i)].advertised["gossip"]) for i in spec.node_ids
        )
        nodes = [
            ProcessSpec(
                name=node_name(i),
                role="node",
                argv=self._node_argv(spec, i, placements[node_name(i)], seeds,
                                     str(store_at.advertised["store"])),
                ports={"client": spec.client_port, "gossip": spec.gossip_port},
                ready_log=rf"Server is started on port {spec.client_port}\b",
                env=_python_env(),
                proxied=("client", "gossip"),
                node_id=i,
                deferred=i in spec.late_node_ids,
            )
            for i in spec.all_node_ids
        ]
        return [*self._disk_processes(spec, placements), store, *nodes]

    def _disk_processes(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[ProcessSpec]:
        if DISK not in placements:
            return []
        volumes = placements[DISK].volumes
        return [ProcessSpec(
            name=DISK,
            role="disk",
            argv=(
                "python", "-m", "harness.lazydisk",
                "--backing", volumes["store-backing"],
                "--mount", volumes["store-data"],
                "--control", disk_control_path(volumes),
                "--seed", str(spec.seed),
            ),
            ports={},
            ready_log=DISK_READY,
            env=_python_env(),
            volumes=dict(DISK_VOLUMES),
        )]

    def _node_argv(
        self, spec: ClusterSpec, node_id: int, at: Placement, seeds: str, store: str
    ) -> tuple[str, ...]:
        client = at.advertised["client"]
        gossip = at.advertised["gossip"]
        argv = [
            "python", "-m", "refserver",
            "--server-id", str(node_id),
            "--port", str(spec.client_port),
            "--internal-port", str(spec.gossip_port),
            "--bind-address", at.bind_host,
            "--advertised-address", client.host,
            "--advertised-port", str(client.port),
            "--gossip-address", gossip.host,
            "--advertised-gossip-port", str(gossip.port),
            "--seed-nodes", seeds,
            "--store", store,
        ]
        if spec.tokens:
            argv += ["--tokens", ",".join(spec.tokens)]
        for defect in spec.defects:
            argv += ["--defect", defect]
        if spec.profile != "protocol":
            argv += ["--profile", spec.profile]
        argv += _gossip_flags(spec)
        return tuple(argv)

    def before_restart(
        self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int
    ) -> list[InitStep]:
        """Under a profile whose peers refuse a node they still hold alive (hstream-0.20:
        DuplicateNodeId, hstream-gossip Server/Handlers.hs:158-163), wait until every peer
        that answers has dropped the killed node, as the hstream target does."""
        settings = self.settings(spec)
        peers = [i for i in spec.all_node_ids if i != node_id]
        if not settings.deviates("refuse_alive_rejoin") or not peers:
            return []
        gossip = settings.gossip
        members = len(spec.all_node_ids)
        # Probed within `members` intervals (shuffled round-robin), confirmed within one
        # more, then spread by gossip for the retransmit budget; plus scheduling slack.
        deadline = (gossip.probe_interval_s * (members + 1) + gossip.roundtrip_timeout_s
                    + gossip.gossip_interval_s * gossip.retransmits(members) + RESTART_SLACK_S)
        hosts = [arg for i in peers
                 for arg in ("--host", str(placements[node_name(i)].direct(spec.client_port)))]
        return [InitStep(
            description=(f"wait until the peers of {node_name(node_id)} drop it from their "
                         f"member lists (profile {spec.profile}: else DuplicateNodeId)"),
            argv=self._admin_argv(spec, *hosts, "--gone", str(node_id)),
            expect=rf"node {node_id} is gone", timeout_s=deadline, retry_interval_s=0.3)]

    def after_start(
        self, spec: ClusterSpec, placements: Mapping[str, Placement], node_id: int
    ) -> list[InitStep]:
        """Under a profile that prints the ready line before joining (hstream-0.20,
        app/server.hs:207), ask the node itself whether it is ready."""
        if not self.settings(spec).deviates("ready_line_before_join"):
            return []
        at = placements[node_name(node_id)].direct(spec.client_port)
        return [InitStep(
            description=f"{node_name(node_id)} says the cluster is ready after its start",
            argv=self._admin_argv(spec, "--host", str(at), "server ready"),
            expect=r"(?i)cluster is ready", timeout_s=60.0)]

    def _admin_argv(self, spec: ClusterSpec, *args: str) -> tuple[str, ...]:
        token = ("--token", spec.tokens[0]) if spec.tokens else ()
        return ("python", "-m", "harness.targets.admin_command", *token, *args)

    def init_steps(
        self, spec: ClusterSpec, placements: Mapping[str, Placement]
    ) -> list[InitStep]:
        # Talk to the servers directly, not through their proxies: a test that starts with
        # a toxic already on the proxy must still get an initialised cluster.
        def admin(node_id: int, command: str) -> tuple[str, ...]:
            at = placements[node_name(node_id)]
            return (
                "python", "-m", "harness.targets.admin_command",
                "--host", str(at.direct(spec.client_port)),
                *(("--token", spec.tokens[0]) if spec.tokens else ()),
                command,
            )

        steps = [
            InitStep(
                description="server init on node-1",
                argv=admin(1, "server init"),
                # A single-seed cluster may have initialised itself; "already" is fine then.
                expect=r'(?i)"type":\s*"(plain|table)"|already',
            )
        ]
        steps += [
            InitStep(
                description=f"wait until {node_name(i)} says the cluster is ready",
                argv=admin(i, "server ready"),
                expect=r"(?i)cluster is ready",
            )
            for i in spec.node_ids
        ]
        return steps


# The store's data volume is the mount point; the data really lives in the backing volume.
DISK_VOLUMES = {"store-data": "/data/store", "store-backing": "/data/store-backing",
                "disk-control": "/data/disk-control"}


def disk_control_path(volumes: Mapping[str, str]) -> str:
    """The lazy disk's control socket, as its process's placement sees it."""
    return f"{volumes['disk-control']}/control.sock"


# The FUSE device the docker runtime passes into the lazy disk's container.
DOCKER_FUSE_DEVICE = "/dev/fuse"


def disk_refusal(spec: ClusterSpec) -> str | None:
    """Why a cluster of this spec has no lazy disk under its store (one line), or None."""
    if spec.backend == "docker":
        # The disk runs in the store's container, from our image (fuse3 and mfusepy in it);
        # the engine is this machine's (the docker runtime routes to its bridge networks), so
        # its /dev/fuse is the one passed into that container.
        if not os.path.exists(DOCKER_FUSE_DEVICE):
            return ("no /dev/fuse on the docker host: the store's container cannot mount the "
                    "lazy disk; load the kernel's FUSE (modprobe fuse) or use --backend local")
        return None
    if spec.backend != "local":
        return (f"the lazy disk runs on the local and docker backends only (a FUSE mount made "
                f"in one {spec.backend} host is not seen by the store's); use --backend local")
    from harness.lazydisk.mounts import fuse_refusal

    return fuse_refusal()


def _gossip_flags(spec: ClusterSpec) -> tuple[str, ...]:
    flags: list[str] = []
    for key, value in sorted(spec.gossip.items()):
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return tuple(flags)


@functools.cache
def _settings_report(profile: str, flags: tuple[str, ...]) -> dict[str, Any]:
    """`python -m refserver.settings_report` for this profile and these flags (cached: the
    answer depends on nothing else)."""
    argv = [python_executable(), "-m", "refserver.settings_report", "--profile", profile,
            *flags]
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=LIST_DEFECTS_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TargetError(f"cannot ask the reference server what it runs with: {error}") \
            from None
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetError(f"the reference server refuses these settings: {last_line}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _python_env() -> dict[str, str]:
    # Unbuffered output: readiness is read from the log as it is written.
    return {"PYTHONUNBUFFERED": "1"}


def python_executable() -> str:
    """What argv[0] == "python" means on the local backend."""
    return sys.executable
