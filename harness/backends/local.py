"""The local backend: every process a subprocess on a loopback address of its own.

Address plan (so advertised addresses differ per node, as on a real network):
- node i binds 127.0.0.(10+i); the store binds 127.0.0.9;
- with Toxiproxy, the proxy for a process listens on 127.0.1.x (same last octet, same port)
  and the process advertises the proxy: clients and peers' gossip both cross it;
- an embedded Toxiproxy API listens on 127.0.1.1:(base_port + 3).
Logs go to reports/<session>/logs/<cluster name>/<process>.log; data to a temporary directory
removed at stop. Each process leads its own process group, so kill/pause reach its children.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from harness import HarnessError
from harness.cluster import (
    Backend,
    Cluster,
    ClusterStartError,
    PortInUse,
    ProxyInfo,
    UnsupportedFault,
)
from harness.cleanup import ClusterRecord, reports_root, terminate, track, untrack
from harness.cleanup import RecordedProcess as _Recorded
from harness.faults.partition import LOCAL_PARTITION_REFUSAL, Grudge
from harness.targets import (
    Endpoint,
    Placement,
    ProcessLayout,
    ProcessSpec,
    Target,
    TargetError,
    target_for,
)
from harness.topology import SESSION_ENV, ClusterSpec

Progress = Callable[[str], None]

STORE_OCTET = 9
NODE_OCTET_BASE = 10
TOXIPROXY_API_HOST = "127.0.1.1"


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def direct_host(layout: ProcessLayout) -> str:
    return f"127.0.0.{_octet(layout)}"


def proxy_host(layout: ProcessLayout) -> str:
    return f"127.0.1.{_octet(layout)}"


def _octet(layout: ProcessLayout) -> int:
    if layout.role == "node" and layout.node_id is not None:
        return NODE_OCTET_BASE + layout.node_id
    if layout.role == "store":
        return STORE_OCTET
    # Any further helper process (a metastore) gets the addresses just below the store.
    return STORE_OCTET - 1


class LocalBackend(Backend):
    name = "local"

    def __init__(self, progress: Progress | None = None, detached: bool = False) -> None:
        self.progress = progress or _stderr_progress
        self.detached = detached

    def start(self, spec: ClusterSpec) -> LocalCluster:
        if spec.backend != "local":
            raise HarnessError(f"LocalBackend cannot start a {spec.backend!r} cluster")
        target = target_for(spec)
        layouts = target.layout(spec)
        cluster = LocalCluster(spec, progress=self.progress, detached=self.detached)
        try:
            cluster._start(target, layouts)
        except BaseException:
            cluster.stop()
            raise
        return cluster


class _Process:
    """One started process: its spec, the Popen, and its log file."""

    def __init__(self, spec: ProcessSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.state = "stopped"
        # Where the current incarnation's output starts: readiness after a restart must not
        # match the previous incarnation's line.
        self.ready_offset = 0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class LocalCluster(Cluster):
    def __init__(self, spec: ClusterSpec, progress: Progress, detached: bool = False) -> None:
        super().__init__(spec)
        self.progress = progress
        self.log_dir = reports_root() / spec.session / "logs" / spec.name
        self.data_dir: Path | None = None
        self.record = ClusterRecord.create(spec.label, spec.session, "local", detached=detached)
        self.processes: dict[str, _Process] = {}
        self._toxiproxy: _Process | None = None
        self._external_toxiproxy = False
        self._stopped = False
        if not detached:
            track(self)

    # -- start ---------------------------------------------------------------------
    def _start(self, target: Target, layouts: list[ProcessLayout]) -> None:
        spec = self.spec
        if any(layout.role == "metastore" for layout in layouts):
            raise TargetError(
                f"target {spec.target!r} runs containers (a metastore, hstream-server) and "
                "cannot run on the local backend; use --backend docker"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{spec.label}-data-"))
        self.record.update_meta(data_dirs=[str(self.data_dir)], spec=spec.to_json())

        proxied = spec.toxiproxy
        placements: dict[str, Placement] = {}
        for layout in layouts:
            host = direct_host(layout)
            advertised = {
                port_name: Endpoint(
                    proxy_host(layout) if proxied and port_name in layout.proxied else host,
                    port,
                )
                for port_name, port in layout.ports.items()
            }
            volumes = {}
            for volume in layout.volumes:
                path = self.data_dir / volume
                path.mkdir(parents=True, exist_ok=True)
                volumes[volume] = str(path)
            placements[layout.name] = Placement(host, host, advertised, volumes)

        specs = target.processes(spec, placements)
        for proc in specs:
            if proc.image is not None:
                raise TargetError(
                    f"{proc.name} needs the container image {proc.image!r}; the local backend "
                    "runs only the reference target, use --backend docker"
                )
        self._check_ports_free(specs, placements, layouts)

        if proxied:
            self._start_toxiproxy()
            self._create_proxies(layouts, placements)

        for proc in specs:
            self.processes[proc.name] = _Process(proc, self.log_dir / f"{proc.name}.log")
        self._add_node_handles(specs, placements, lambda name: self.processes[name].log_path)
        for proc in specs:
            if proc.deferred:
                continue  # a late node: started by join(n)
            self._launch(self.processes[proc.name], first=True)
            self._await_ready(self.processes[proc.name])
        for step in target.init_steps(spec, placements):
            self._run_init_step(step)
        self._write_status()
        self.progress(f"cluster {spec.label} ready: " + ", ".join(self.client_urls()))

    def _check_ports_free(
        self,
        specs: list[ProcessSpec],
        placements: Mapping[str, Placement],
        layouts: list[ProcessLayout],
    ) -> None:
        wanted: list[tuple[Endpoint, str]] = []
        for proc in specs:
            host = placements[proc.name].bind_host
            for port_name, port in proc.ports.items():
                wanted.append((Endpoint(host, port), f"{proc.name} {port_name}"))
                if self.spec.toxiproxy and port_name in proc.proxied:
                    wanted.append(
                        (
                            placements[proc.name].advertised[port_name],
                            f"proxy for {proc.name} {port_name}",
                        )
                    )
        if self.spec.toxiproxy and not self.spec.toxiproxy_url:
            wanted.append(
                (Endpoint(TOXIPROXY_API_HOST, self.spec.base_port + 3), "embedded Toxiproxy API")
            )
        for endpoint, owner in wanted:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As the servers do: with SO_REUSEADDR only a listener makes bind fail, not the
                # TIME_WAIT connections a previous cluster on these ports left behind.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((endpoint.host, endpoint.port))
                except OSError:
                    raise PortInUse(endpoint, owner) from None

    def _env(self, proc: ProcessSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(proc.env)
        env[SESSION_ENV] = self.spec.session
        env["HSTREAM_CONFORMANCE_CLUSTER"] = self.spec.label
        return env

    def _argv(self, proc: ProcessSpec) -> list[str]:
        argv = list(proc.argv)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        return argv

    def _launch(self, proc: _Process, first: bool = False) -> None:
        spec = proc.spec
        with proc.log_path.open("ab") as log:
            if not first:
                log.write(f"\n=== harness: restarting {spec.name} at {time.ctime()} ===\n".encode())
            proc.ready_offset = log.tell()
            log.flush()
            try:
                proc.popen = subprocess.Popen(
                    self._argv(spec),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._env(spec),
                    start_new_session=True,
                )
            except OSError as exc:
                raise ClusterStartError(
                    f"cannot start {spec.name} ({' '.join(self._argv(spec))}): {exc}"
                ) from None
        proc.state = "running"
        self.record.add_process(proc.popen.pid, spec.name, self._argv(spec))
        self._sync_node_handle(proc)

    def _await_ready(self, proc: _Process) -> None:
        spec = proc.spec
        self.progress(f"starting {spec.name} ... waiting for '{spec.waiting_for}'")
        began = time.monotonic()
        pattern = re.compile(spec.ready_log)
        offset = proc.ready_offset
        deadline = began + spec.ready_timeout_s
        while True:
            text = _read_from(proc.log_path, offset)
            if pattern.search(text):
                self.progress(
                    f"  {spec.name} ready in {time.monotonic() - began:.1f}s "
                    f"(pid {proc.pid}, log {proc.log_path})"
                )
                return
            assert proc.popen is not None
            code = proc.popen.poll()
            if code is not None:
                raise ClusterStartError(
                    f"{spec.name} exited with status {code} before logging "
                    f"{spec.waiting_for!r}; last log lines:\n{_tail(proc.log_path)}\n"
                    f"full log: {proc.log_path}"
                )
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{spec.name} did not log {spec.waiting_for!r} within "
                    f"{spec.ready_timeout_s:.0f}s; last log lines:\n{_tail(proc.log_path)}\n"
                    f"full log: {proc.log_path}"
                )
            time.sleep(0.05)

    # -- Toxiproxy -------------------------------------------------------------------
    def _start_toxiproxy(self) -> None:
        if self.spec.toxiproxy_url:
            self.toxiproxy_url = self.spec.toxiproxy_url.rstrip("/")
            self._external_toxiproxy = True
            _await_toxiproxy(self.toxiproxy_url, timeout_s=5.0, what="--toxiproxy-url")
            return
        port = self.spec.base_port + 3
        self.toxiproxy_url = f"http://{TOXIPROXY_API_HOST}:{port}"
        argv = toxiproxy_server_argv(TOXIPROXY_API_HOST, port)
        spec = ProcessSpec(
            name="toxiproxy", role="store", argv=tuple(argv), ports={"api": port}, ready_log=""
        )
        proc = _Process(spec, self.log_dir / "toxiproxy.log")
        self._toxiproxy = proc
        self.progress(f"starting toxiproxy ... waiting for {self.toxiproxy_url}/version")
        self._launch(proc, first=True)
        try:
            _await_toxiproxy(
                self.toxiproxy_url, timeout_s=15.0, what="embedded Toxiproxy", process=proc.popen
            )
        except HarnessError as exc:
            raise ClusterStartError(
                f"{exc}; last log lines:\n{_tail(proc.log_path)}\nfull log: {proc.log_path}"
            ) from None
        self.extra["toxiproxy"] = {"kind": "embedded", "argv": argv, "pid": proc.pid}

    def _create_proxies(
        self, layouts: list[ProcessLayout], placements: Mapping[str, Placement]
    ) -> None:
        assert self.toxiproxy_url
        external: list[dict[str, str]] = []
        for layout in layouts:
            at = placements[layout.name]
            for port_name in layout.proxied:
                name = f"{self.spec.label}-{layout.name}-{port_name}"
                listen = at.advertised[port_name]
                upstream = at.direct(layout.ports[port_name])
                _toxiproxy_client(self.toxiproxy_url).create(
                    upstream=str(upstream), name=name, listen=str(listen), enabled=True
                )
                self.proxies[(layout.name, port_name)] = ProxyInfo(
                    name, listen, upstream, self.toxiproxy_url
                )
                if self._external_toxiproxy:
                    external.append({"api_url": self.toxiproxy_url, "name": name})
        if external:
            self.record.update_meta(external_proxies=external)

    # -- handles -----------------------------------------------------------------------
    def _sync_node_handle(self, proc: _Process) -> None:
        for node in self.nodes:
            if node.name == proc.spec.name:
                node.pid = proc.pid
                node.state = proc.state

    def _node_process(self, n: int) -> _Process:
        return self.processes[self.node(n).name]

    def _write_status(self) -> None:
        self.extra["store"] = {
            "pid": self.processes["store"].pid if "store" in self.processes else None,
            "log": str(self.processes["store"].log_path) if "store" in self.processes else None,
        }
        self.extra["logs_dir"] = str(self.log_dir)
        self.record.update_meta(status=self.status())

    # -- faults ------------------------------------------------------------------------
    def _signal(self, proc: _Process, sig: signal.Signals) -> None:
        if not proc.running():
            raise HarnessError(f"{proc.spec.name} is not running (state {proc.state})")
        assert proc.popen is not None
        os.killpg(proc.popen.pid, sig)

    def _kill(self, proc: _Process) -> None:
        if proc.running():
            assert proc.popen is not None
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        proc.state = "killed"
        self._sync_node_handle(proc)
        self._write_status()

    def _restart(self, proc: _Process) -> None:
        if proc.running():
            self._kill(proc)
        self._launch(proc, first=proc.popen is None)
        self._await_ready(proc)
        self._write_status()

    def kill(self, n: int) -> None:
        self._kill(self._node_process(n))

    def pause(self, n: int) -> None:
        proc = self._node_process(n)
        self._signal(proc, signal.SIGSTOP)
        proc.state = "paused"
        self._sync_node_handle(proc)
        self._write_status()

    def resume(self, n: int) -> None:
        proc = self._node_process(n)
        self._signal(proc, signal.SIGCONT)
        proc.state = "running"
        self._sync_node_handle(proc)
        self._write_status()

    def restart(self, n: int) -> None:
        self._restart(self._node_process(n))

    def kill_store(self) -> None:
        self._kill(self.processes["store"])

    def restart_store(self) -> None:
        self._restart(self.processes["store"])

    def _runtime_refusal(self, means: str) -> str | None:
        return LOCAL_PARTITION_REFUSAL if means == "partition" else None

    def partition(self, grudge: Grudge) -> None:
        raise UnsupportedFault(LOCAL_PARTITION_REFUSAL)

    def heal(self) -> None:
        # No partition can be active (they are refused above); re-enable this cluster's
        # proxies only — a shared external Toxiproxy may serve other clusters, so no /reset.
        if not self.toxiproxy_url or self._stopped:
            return
        for info in self.proxies.values():
            with contextlib.suppress(requests.RequestException):
                requests.post(
                    f"{self.toxiproxy_url}/proxies/{info.name}", json={"enabled": True}, timeout=5
                )

    # -- evidence and teardown -----------------------------------------------------------
    def logs(self) -> dict[str, Path]:
        found = {name: proc.log_path for name, proc in self.processes.items()}
        if self._toxiproxy is not None:
            found["toxiproxy"] = self._toxiproxy.log_path
        return found

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        untrack(self)
        live = [p for p in [*self.processes.values(), self._toxiproxy] if p and p.popen]
        terminate([_Recorded(p.pid, None, p.spec.name, []) for p in live if p.running() and p.pid])
        for proc in live:
            assert proc.popen is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            proc.state = "stopped"
            self._sync_node_handle(proc)
        if self._external_toxiproxy and self.toxiproxy_url:
            for info in self.proxies.values():
                with contextlib.suppress(requests.RequestException):
                    requests.delete(f"{self.toxiproxy_url}/proxies/{info.name}", timeout=3)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.record.remove()


# -- helpers local to this backend ---------------------------------------------------------
def toxiproxy_server_argv(host: str, port: int) -> list[str]:
    """A real `toxiproxy-server` when on PATH, else the harness's compatible server."""
    real = shutil.which("toxiproxy-server")
    if real:
        return [real, "-host", host, "-port", str(port)]
    return [sys.executable, "-m", "harness.faults.toxiproxy", "--host", host, "--port", str(port)]


def _toxiproxy_client(api_url: str):  # type: ignore[no-untyped-def]
    from toxiproxy.server import Toxiproxy

    host, _, port = api_url.split("://", 1)[-1].rstrip("/").rpartition(":")
    server = Toxiproxy()
    server.update_api_consumer(host, int(port))
    return server


def _await_toxiproxy(
    api_url: str, timeout_s: float, what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise HarnessError(
                f"{what} exited with status {process.returncode} before answering {api_url}/version"
            )
        try:
            response = requests.get(f"{api_url}/version", timeout=1)
            if response.ok:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise HarnessError(
        f"{what} at {api_url} did not answer /version within {timeout_s:.0f}s (last: {last})"
    )


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    text = _read_from(path, 0).splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in text) or "    (empty)"
