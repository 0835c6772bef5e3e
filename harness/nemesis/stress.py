"""Stress: a node left short of CPU or memory while it keeps running (it is not down).

* ``stress-cpu``: Debian's stress-ng CPU hogs made to compete with the node for one CPU.
  Locally the node's threads and the hogs are pinned to the same CPU (sched_setaffinity,
  the node's own affinity restored at stop); in a container the hogs run inside the node's
  container (docker exec) with the container's cpuset narrowed to one CPU. A hog is busy
  `load` percent of the time in bursts of `slice_ms`; with `realtime` it runs SCHED_FIFO,
  so each burst holds the node off its CPU for the whole burst -- the node's event loop is
  starved in stretches, as on an overloaded machine, but never for long enough to stop
  answering (the default bursts are shorter than any suspicion timeout). A container has no
  real-time CPU time, so there the hogs run at nice -15 instead (`CONTAINER_HOG_NICE`).
* ``stress-memory``: stress-ng VM hogs next to the node keep `megabytes` each resident.
* ``throttle-cpu``: the node's cgroup may use `quota_percent` of every `period_ms` (CFS
  bandwidth control): docker ``container.update(cpu_quota=, cpu_period=)``, locally a cgroup
  of our own (cgroup v2 ``cpu.max`` where the cpu controller is delegated, else v1
  ``cpu.cfs_quota_us``), refused in one line where neither is writable.

The truth: a stressed node is no more down than before (the instance's ``down`` is empty).
Stop and teardown kill every stress-ng process the family started (its process group, or
inside the container), restore each node's affinity, cpuset and quota, and remove our
cgroups. Every stress-ng also runs with ``--timeout`` (`HOG_LIFETIME_S`), so a run killed
before its teardown leaves no hog behind for long; locally they are recorded with the
cluster's processes, which the next run's sweep removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.nemesis.base import Context, Family, NemesisError, Undo
from harness.nemesis.faults import STRESS_KINDS, FaultInstance

if TYPE_CHECKING:
    from harness.cluster import Cluster

# A stress-ng outlives no test: it ends itself after this long whatever happens to us.
HOG_LIFETIME_S = 900
# A stress-ng that cannot start (bad option, no permission for SCHED_FIFO) exits at once.
HOG_START_CHECK_S = 0.3
# The real-time priority of the hogs: any SCHED_FIFO priority beats every normal task.
HOG_RT_PRIORITY = 10
# In a container (no real-time time there) the hogs outweigh the node by niceness instead.
CONTAINER_HOG_NICE = -15
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Our cgroups are named this, then the cluster's label and the node: a run killed before
# its teardown leaves an empty one behind, which the next one made here removes.
CGROUP_PREFIX = "hstream-conformance-"
STOP_WAIT_S = 5.0


def stress_argv(kind: str, attributes: dict[str, int], cpu: int | None) -> list[str]:
    """The stress-ng command line for one stress fault (on `cpu` when given)."""
    a = attributes
    argv = ["stress-ng", "--timeout", f"{HOG_LIFETIME_S}s", "--quiet"]
    if kind == "stress-cpu":
        for key in ("workers", "load", "slice_ms"):
            if int(a.get(key, 0)) <= 0:
                raise NemesisError(f"stress-cpu needs a positive {key}, got {a.get(key)!r}")
        if int(a["load"]) > 100:
            raise NemesisError(f"stress-cpu load is a percentage (1-100), got {a['load']}")
        # --cpu-load-slice below zero: busy slices of that many milliseconds.
        argv += ["--cpu", str(a["workers"]), "--cpu-load", str(a["load"]),
                 "--cpu-load-slice", str(-int(a["slice_ms"]))]
        if a.get("realtime"):
            argv += ["--sched", "fifo", "--sched-prio", str(HOG_RT_PRIORITY)]
    elif kind == "stress-memory":
        for key in ("workers", "megabytes"):
            if int(a.get(key, 0)) <= 0:
                raise NemesisError(f"stress-memory needs a positive {key}, got {a.get(key)!r}")
        argv += ["--vm", str(a["workers"]), "--vm-bytes", f"{a['megabytes']}M", "--vm-keep"]
    else:
        raise NemesisError(f"stress-ng has no command for {kind}")
    if cpu is not None:
        argv += ["--taskset", str(cpu)]
    return argv


def quota(attributes: dict[str, int]) -> tuple[int, int]:
    """(quota, period) in microseconds for a throttle-cpu fault."""
    percent = int(attributes.get("quota_percent", 0))
    period_ms = int(attributes.get("period_ms", 0))
    if not 0 < percent < 100:
        raise NemesisError(f"throttle-cpu quota_percent must be 1-99, got {percent}")
    if not 1 <= period_ms <= 1000:
        raise NemesisError(f"throttle-cpu period_ms must be 1-1000, got {period_ms}")
    period = period_ms * 1000
    return max(1000, period * percent // 100), period


def thread_ids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_delay_seconds(pid: int) -> float:
    """How long the process's threads have waited on a run queue so far (schedstat)."""
    total = 0
    for tid in thread_ids(pid):
        with contextlib.suppress(FileNotFoundError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


# -- cgroups on this machine --------------------------------------------------------------------


@dataclass
class LocalCgroup:
    """A cpu cgroup of our own holding one process, on cgroup v2 or v1."""

    path: Path
    version: int
    origin: Path  # the cgroup the process came from, where it goes back

    @staticmethod
    def refusal() -> str | None:
        """Why no cpu cgroup can be made here (one line), or None."""
        if _v2_cpu() is not None or _v1_cpu() is not None:
            return None
        return ("throttle-cpu on the local runtime needs a writable cgroup cpu controller "
                f"(cgroup v2 with cpu in {CGROUP_ROOT}/cgroup.subtree_control, or v1 "
                f"{CGROUP_ROOT}/cpu) and root; use --backend docker or run as root")

    @classmethod
    def create(cls, name: str, pid: int, quota_us: int, period_us: int) -> LocalCgroup:
        cls.sweep()
        v2 = _v2_cpu()
        if v2 is not None:
            origin = v2 / _own_cgroup(pid, "").lstrip("/")
            group = cls(v2 / name, 2, origin)
            group.path.mkdir(exist_ok=True)
            (group.path / "cpu.max").write_text(f"{quota_us} {period_us}\n")
        else:
            v1 = _v1_cpu()
            if v1 is None:
                raise NemesisError(cls.refusal() or "no cpu cgroup")
            origin = v1 / _own_cgroup(pid, "cpu").lstrip("/")
            group = cls(v1 / name, 1, origin)
            group.path.mkdir(exist_ok=True)
            (group.path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (group.path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        # cgroup.procs moves every thread of the process (both versions).
        try:
            (group.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            group.release(None)
            raise
        return group

    @staticmethod
    def sweep() -> list[Path]:
        """Remove our cgroups that no process is in any more (left by a killed run); one in
        use (another run's) refuses the rmdir and stays."""
        removed = []
        for root in filter(None, (_v2_cpu(), _v1_cpu())):
            for group in root.glob(f"{CGROUP_PREFIX}*"):
                with contextlib.suppress(OSError):
                    if not (group / "cgroup.procs").read_text().strip():
                        group.rmdir()
                        removed.append(group)
        return removed

    def throttled_s(self) -> float:
        """Time the group was held back by its quota so far, in seconds (cpu.stat)."""
        stat = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        if self.version == 2:
            return int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def release(self, pid: int | None) -> None:
        """Move the process back where it came from and remove the group."""
        if pid is not None and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                (self.origin / "cgroup.procs").write_text(f"{pid}\n")
        # A process that ended leaves the group by itself; an rmdir may race its exit.
        deadline = time.monotonic() + STOP_WAIT_S
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _v2_cpu() -> Path | None:
    """The cgroup v2 root if it delegates the cpu controller to us, else None."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        control = root / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            if "cpu" in control.read_text().split() and os.access(root, os.W_OK):
                return root
    return None


def _v1_cpu() -> Path | None:
    root = CGROUP_ROOT / "cpu"
    if (root / "cpu.cfs_quota_us").exists() and os.access(root, os.W_OK):
        return root
    return None


def _own_cgroup(pid: int, controller: str) -> str:
    """The process's cgroup path in the v1 hierarchy of `controller` ("" = v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers.split(",") == [controller] or (controller in controllers.split(",")
                                                     and controller):
            return path
    return "/"


# -- what the family holds while a fault lasts ---------------------------------------------------


@dataclass
class Applied:
    """What one stress fault changed on one node, so that stop can undo exactly that."""

    kind: str
    node: int
    hog: subprocess.Popen[bytes] | None = None  # local stress-ng (leads its process group)
    affinity: dict[int, set[int]] = field(default_factory=dict)  # tid -> its CPUs before
    cgroup: LocalCgroup | None = None
    container: Any = None  # docker: the node's container
    hog_pidfile: str = ""  # docker: where the stress-ng in the container wrote its pid
    cpuset: str | None = None  # docker: the container's cpuset before ("" = every CPU)
    cpu_quota: tuple[int, int] | None = None  # docker: (quota, period) before


class Stress(Family):
    name = "stress"
    needs = ()  # what each runtime lacks is refused per fault, in invoke
    kinds = STRESS_KINDS

    def __init__(self) -> None:
        self.applied: dict[tuple[str, int], Applied] = {}

    # -- queries tests use to measure what a fault does
    def cgroup(self, n: int) -> LocalCgroup | None:
        found = self.applied.get(("throttle-cpu", n))
        return found.cgroup if found else None

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        kind = instance.fault.kind
        attributes = dict(instance.fault.attributes)
        if action == "start":
            self._refuse(ctx.cluster, kind, list(instance.nodes))
            for n in instance.nodes:
                if (kind, n) in self.applied:
                    continue  # already under this fault: one stress of a kind per node
                self.applied[(kind, n)] = self._start(ctx.cluster, kind, n, attributes)
        else:
            undo = Undo(self.name)
            for n in instance.nodes:
                applied = self.applied.pop((kind, n), None)
                if applied is not None:
                    undo.attempt(f"{kind} on node {n}", self._stop, ctx.cluster, applied)
            undo.done()
        # A stressed node runs and stays a member: nothing goes down, nothing comes up.
        return set(), set()

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        for key in list(self.applied):
            applied = self.applied.pop(key)
            undo.attempt(f"{applied.kind} on node {applied.node}", self._stop, ctx.cluster,
                         applied)
        undo.done()

    # -- refusals: before anything happens, one line each
    def _refuse(self, cluster: Cluster, kind: str, nodes: list[int]) -> None:
        from harness.cluster import UnsupportedFault

        backend = cluster.spec.backend
        if backend not in ("local", "docker"):
            raise UnsupportedFault(
                f"{kind} runs on the local and docker runtimes, not {backend}")
        if not nodes:
            raise UnsupportedFault(f"{kind} needs a node to stress; aim it with on(n)")
        for n in nodes:
            node = cluster.node(n)
            if node.state != "running":
                raise UnsupportedFault(f"{kind}: node {n} is {node.state}, not running")
        if backend == "local":
            if kind == "throttle-cpu":
                reason = LocalCgroup.refusal()
                if reason:
                    raise UnsupportedFault(reason)
            elif shutil.which("stress-ng") is None:
                from harness.debian import ToolMissing, ensure_tools

                try:
                    ensure_tools({"stress-ng": "stress-ng"}, why=f"the {kind} fault")
                except ToolMissing as exc:
                    raise UnsupportedFault(str(exc)) from None
        elif kind != "throttle-cpu":
            for n in nodes:
                code, _ = self._container(cluster, n).exec_run(["which", "stress-ng"])
                if code != 0:
                    raise UnsupportedFault(
                        f"{kind} on docker runs stress-ng inside the node's container, and "
                        f"node {n}'s image has none: add stress-ng to its image "
                        "(docker/refserver/Dockerfile)")

    # -- applying
    def _start(self, cluster: Cluster, kind: str, n: int, attributes: dict[str, int]) -> Applied:
        if cluster.spec.backend == "docker":
            return self._start_docker(cluster, kind, n, attributes)
        node = cluster.node(n)
        assert node.pid is not None
        applied = Applied(kind, n)
        try:
            if kind == "throttle-cpu":
                quota_us, period_us = quota(attributes)
                applied.cgroup = LocalCgroup.create(
                    f"{CGROUP_PREFIX}{cluster.spec.label}-node-{n}", node.pid, quota_us,
                    period_us)
                return applied
            cpu = None
            if kind == "stress-cpu":
                cpu = max(os.sched_getaffinity(node.pid))
                # Every thread of the node (the event loop, gRPC's pollers) on the hogs' CPU.
                for tid in thread_ids(node.pid):
                    with contextlib.suppress(ProcessLookupError):
                        applied.affinity[tid] = os.sched_getaffinity(tid)
                        os.sched_setaffinity(tid, {cpu})
            applied.hog = _spawn_hog(cluster, stress_argv(kind, attributes, cpu), n)
            return applied
        except BaseException:
            self._stop(cluster, applied)
            raise

    def _start_docker(self, cluster: Cluster, kind: str, n: int,
                      attributes: dict[str, int]) -> Applied:
        container = self._container(cluster, n)
        container.reload()
        host = container.attrs.get("HostConfig", {})
        applied = Applied(kind, n, container=container)
        try:
            if kind == "throttle-cpu":
                quota_us, period_us = quota(attributes)
                applied.cpu_quota = (int(host.get("CpuQuota") or 0),
                                     int(host.get("CpuPeriod") or 0))
                container.update(cpu_quota=quota_us, cpu_period=period_us)
                return applied
            cpu = None
            if kind == "stress-cpu":
                applied.cpuset = str(host.get("CpusetCpus") or "")
                cpu = max(os.sched_getaffinity(0))
                # The node and the hogs share the container's cpuset: one CPU for both.
                container.update(cpuset_cpus=str(cpu))
            applied.hog_pidfile = f"/tmp/{cluster.spec.label}-{kind}.pid"
            # A container gets no real-time CPU time under group scheduling (docker's
            # --cpu-rt-runtime defaults to none), so `realtime` hogs are given the highest
            # normal priority instead, from this machine (the container may not renice).
            hog = " ".join(stress_argv(kind, {**attributes, "realtime": 0}, None))
            script = f"echo $$ > {applied.hog_pidfile}; exec {hog}"
            container.exec_run(["sh", "-c", script], detach=True)
            time.sleep(HOG_START_CHECK_S)
            code, _ = container.exec_run(["sh", "-c", f"kill -0 $(cat {applied.hog_pidfile})"])
            if code != 0:
                raise NemesisError(f"{kind}: stress-ng ended at once in node {n}'s container")
            if kind == "stress-cpu" and attributes.get("realtime"):
                hogs = _host_pids(container.id, "stress-ng")
                if not hogs:
                    raise NemesisError(
                        f"{kind}: the stress-ng in node {n}'s container is not visible from "
                        "this machine (a remote docker engine?) to be given its priority; "
                        "set realtime=0")
                for pid in hogs:
                    with contextlib.suppress(ProcessLookupError):
                        os.setpriority(os.PRIO_PROCESS, pid, CONTAINER_HOG_NICE)
            return applied
        except BaseException:
            self._stop(cluster, applied)
            raise

    @staticmethod
    def _container(cluster: Cluster, n: int) -> Any:
        from harness.images import connect

        node = cluster.node(n)
        if not node.container_id:
            raise NemesisError(f"node {n} has no container of its own")
        return connect().containers.get(node.container_id)

    # -- undoing (every step tried; the first failure raised after the rest)
    def _stop(self, cluster: Cluster, applied: Applied) -> None:
        undo = Undo(f"{applied.kind} on node {applied.node}")
        if applied.hog is not None:
            undo.attempt("stop stress-ng", _stop_hog, applied.hog)
        for tid, cpus in applied.affinity.items():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended is fine
                os.sched_setaffinity(tid, cpus)
        if applied.affinity:
            # Threads the node started meanwhile inherited the narrowed set: widen them too.
            pid = cluster.node(applied.node).pid
            widest = set().union(*applied.affinity.values())
            for tid in thread_ids(pid) if pid else []:
                if tid not in applied.affinity:
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(tid, widest)
        if applied.cgroup is not None:
            undo.attempt("release cgroup", applied.cgroup.release, cluster.node(applied.node).pid)
        container = applied.container
        if container is not None:
            if applied.hog_pidfile:
                undo.attempt("stop stress-ng in the container", _exec_ok, container,
                             f"kill $(cat {applied.hog_pidfile}) 2>/dev/null; "
                             f"rm -f {applied.hog_pidfile}; true")
            if applied.cpuset is not None:
                everything = f"0-{(os.cpu_count() or 1) - 1}"
                undo.attempt("restore cpuset",
                             partial(container.update, cpuset_cpus=applied.cpuset or everything))
            if applied.cpu_quota is not None:
                before_quota, before_period = applied.cpu_quota
                # -1: no limit (0 would mean "unchanged" to the update call).
                undo.attempt("restore cpu quota",
                             partial(container.update, cpu_quota=before_quota or -1,
                                     cpu_period=before_period or 100_000))
        undo.done()


def _spawn_hog(cluster: Cluster, argv: list[str], n: int) -> subprocess.Popen[bytes]:
    hog = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    cluster.record.add_process(hog.pid, f"stress-ng-node-{n}", argv)
    time.sleep(HOG_START_CHECK_S)
    if hog.poll() is not None:
        output = (hog.stdout.read() if hog.stdout else b"").decode(errors="replace").strip()
        raise NemesisError(
            f"stress-ng next to node {n} ended at once (status {hog.returncode}): "
            f"{output.splitlines()[-1] if output else ' '.join(argv)}")
    return hog


def _stop_hog(hog: subprocess.Popen[bytes]) -> None:
    # stress-ng leads its group; its workers are in it and go with it.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hog.pid, sig)
        try:
            hog.wait(timeout=STOP_WAIT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if hog.stdout is not None:
        hog.stdout.close()
    # Workers of a group whose leader is gone: none may survive.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(hog.pid, signal.SIGKILL)


def _host_pids(container_id: str, comm_prefix: str) -> list[int]:
    """Processes of this machine named `comm_prefix`* that run in the container."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().startswith(comm_prefix) and \
                    container_id in (entry / "cgroup").read_text():
                found.append(int(entry.name))
    return found


def _exec_ok(container: Any, script: str) -> None:
    code, output = container.exec_run(["sh", "-c", script])
    if code != 0:
        raise NemesisError(output.decode(errors="replace").strip() or f"exit status {code}")
