"""The local runtime: every process a subprocess of this machine on a loopback address of its own.

Address plan (so advertised addresses differ per node, as on a real network):
- node i binds 127.0.0.(10+i); the store binds 127.0.0.9;
- with Toxiproxy, the proxy for a process listens on 127.0.1.x (same last octet, same port)
  and the process advertises the proxy: clients and peers' gossip both cross it;
- an embedded Toxiproxy API listens on 127.0.1.1:(base_port + 3).
Data goes to a temporary directory removed at teardown. Each process leads its own process
group, so signals reach its children. Partitions are refused: one proxy per port sees no
source address, so it cannot drop some peers' traffic and not others'.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.cleanup import ClusterRecord, RecordedProcess, terminate
from harness.faults.partition import LOCAL_PARTITION_REFUSAL
from harness.runtimes import (
    ClusterStartError,
    PortInUse,
    ProcHandle,
    Progress,
    Provision,
    ToxiproxySite,
    run_here,
)
from harness.targets import (
    Endpoint,
    InitStep,
    Placement,
    ProcessLayout,
    ProcessSpec,
    TargetError,
)
from harness.topology import ClusterSpec

STORE_OCTET = 9
NODE_OCTET_BASE = 10
TOXIPROXY_API_HOST = "127.0.1.1"


def _octet(layout: ProcessLayout) -> int:
    if layout.role == "node" and layout.node_id is not None:
        return NODE_OCTET_BASE + layout.node_id
    return STORE_OCTET if layout.role == "store" else STORE_OCTET - 1


def toxiproxy_server_argv(host: str, port: int) -> list[str]:
    """A real `toxiproxy-server` when on PATH, else the harness's compatible server."""
    real = shutil.which("toxiproxy-server")
    if real:
        return [real, "-host", host, "-port", str(port)]
    return [sys.executable, "-m", "harness.faults.toxiproxy", "--host", host, "--port", str(port)]


class LocalHost:
    """This machine: processes are subprocesses, each leading its own process group."""

    name = "localhost"

    def __init__(self, record: ClusterRecord) -> None:
        self.record = record
        self.popens: dict[str, subprocess.Popen[bytes]] = {}  # handle ref (pid) -> Popen

    def spawn(self, spec: ProcessSpec, env: Mapping[str, str], log_path: Path) -> ProcHandle:
        argv = list(spec.argv)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            if log.tell():
                log.write(f"\n=== harness: restarting {spec.name} at {time.ctime()} ===\n"
                          .encode())
                log.flush()
            try:
                popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                         start_new_session=True)
            except OSError as exc:
                raise ClusterStartError(f"cannot start {spec.name} ({' '.join(argv)}): {exc}") \
                    from None
        self.popens[str(popen.pid)] = popen
        self.record.add_process(popen.pid, spec.name, argv)
        return ProcHandle(spec.name, self.name, str(popen.pid), log_path, {"pid": popen.pid})

    def signal(self, handle: ProcHandle, sig: signal.Signals) -> None:
        try:
            os.killpg(int(handle.ref), sig)
        except ProcessLookupError:
            pass  # already gone: exit_status says so

    def exit_status(self, handle: ProcHandle) -> int | None:
        return self.popens[handle.ref].poll()

    def exec(self, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return 124, f"(timed out after {timeout_s:.0f}s)"
        return done.returncode, done.stdout + done.stderr

    def read_log(self, handle: ProcHandle) -> str:
        try:
            return handle.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def put(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def stop_all(self) -> None:
        live = [p for p in self.popens.values() if p.poll() is None]
        terminate([RecordedProcess(p.pid, None, "", []) for p in live])
        for popen in self.popens.values():
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class LocalRuntime:
    name = "local"

    def __init__(self, spec: ClusterSpec, progress: Progress, record: ClusterRecord) -> None:
        self.spec = spec
        self.progress = progress
        self.host = LocalHost(record)
        self.record = record
        self.data_dir: Path | None = None
        self._wanted_ports: list[tuple[Endpoint, str]] = []

    def provision(self, layouts: Sequence[ProcessLayout]) -> Provision:
        spec = self.spec
        if any(layout.role == "metastore" for layout in layouts):
            raise TargetError(
                f"target {spec.target!r} runs containers (a metastore, hstream-server) and "
                "cannot run on the local backend; use --backend docker")
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{spec.label}-data-"))
        self.record.update_meta(data_dirs=[str(self.data_dir)])
        placements: dict[str, Placement] = {}
        listen: dict[tuple[str, str], Endpoint] = {}
        for layout in layouts:
            host = f"127.0.0.{_octet(layout)}"
            advertised: dict[str, Endpoint] = {}
            for port_name, port in layout.ports.items():
                advertised[port_name] = Endpoint(host, port)
                self._wanted_ports.append((Endpoint(host, port), f"{layout.name} {port_name}"))
                if spec.toxiproxy and port_name in layout.proxied:
                    advertised[port_name] = Endpoint(f"127.0.1.{_octet(layout)}", port)
                    listen[(layout.name, port_name)] = advertised[port_name]
                    self._wanted_ports.append(
                        (advertised[port_name], f"proxy for {layout.name} {port_name}"))
            volumes = {}
            for volume in layout.volumes:
                path = self.data_dir / volume
                path.mkdir(parents=True, exist_ok=True)
                volumes[volume] = str(path)
            placements[layout.name] = Placement(host, host, advertised, volumes)
        site = None
        if spec.toxiproxy and spec.toxiproxy_url:
            site = ToxiproxySite(spec.toxiproxy_url, listen)
        elif spec.toxiproxy:
            port = spec.base_port + 3
            self._wanted_ports.append((Endpoint(TOXIPROXY_API_HOST, port),
                                       "embedded Toxiproxy API"))
            argv = toxiproxy_server_argv(TOXIPROXY_API_HOST, port)
            server = ProcessSpec(name="toxiproxy", role="store", argv=tuple(argv),
                                 ports={"api": port}, ready_log="")
            site = ToxiproxySite(f"http://{TOXIPROXY_API_HOST}:{port}", listen, self.host, server)
        hosts = {layout.name: self.host for layout in layouts}
        return Provision(placements, dict(hosts), site, None, {"data_dir": str(self.data_dir)})

    def check(self, specs: Sequence[ProcessSpec], steps: Sequence[InitStep]) -> None:
        for proc in specs:
            if proc.image is not None:
                raise TargetError(
                    f"{proc.name} needs the container image {proc.image!r}; the local backend "
                    "runs only the reference target, use --backend docker")
        for endpoint, owner in self._wanted_ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As the servers do: with SO_REUSEADDR only a listener makes bind fail, not
                # the TIME_WAIT connections a previous cluster on these ports left behind.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((endpoint.host, endpoint.port))
                except OSError:
                    raise PortInUse(endpoint, owner) from None

    def run_init(self, step: InitStep, timeout_s: float) -> tuple[int, str]:
        return run_here(step, timeout_s, self.spec.session)

    def refusal(self, means: str) -> str | None:
        return LOCAL_PARTITION_REFUSAL if means == "partition" else None

    def teardown(self) -> None:
        self.host.stop_all()
        if self.data_dir is not None:
            # A lazy disk killed before it unmounted leaves a dead mount rmtree cannot remove.
            from harness.lazydisk.mounts import unmount_under

            unmount_under(self.data_dir)
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @staticmethod
    def sweep(labels: list[str], metas: list[dict[str, object]]) -> None:
        """Nothing beyond the pid registry (harness.cleanup) and the data directories."""
