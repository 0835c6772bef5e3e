"""Toxiproxy for the harness: a real server when one is given, else the embedded one.

Network faults other than partitions (latency, jitter, bandwidth caps, slicing, resets,
timeouts, a proxy taken down) go through Toxiproxy's REST API. Three ways to get a server:

- `connect_toxiproxy(url)`: a running Toxiproxy (kind "real"; "embedded" if it is ours);
- `find_toxiproxy(url)`: the explicit URL if given, else a `toxiproxy-server` found on PATH,
  else the embedded server;
- `start_toxiproxy(host, port)`: the embedded server, a Python process that speaks the same
  REST API (`python -m harness.faults.toxiproxy --host H --port P`, which a container can run
  too). Its `/version` ends in `+hstream-embedded`, which is how reports tell them apart.

Toxicity: Toxiproxy draws a toxic's toxicity once per connection (and again whenever that
connection's toxic chain changes), not per packet. gRPC keeps one connection open for the
whole run, so a toxicity of 0.3 means "this channel is always or never affected", not "30% of
calls". The harness therefore applies toxics at toxicity 1.0 and lets its seeded fault
schedule decide *when* a toxic is present.

Other Toxiproxy facts suites rely on (the embedded server reproduces them):
- adding, updating or removing a toxic applies to live connections; stream "upstream" is
  client→server, "downstream" (the default) server→client;
- disabling a proxy closes its listener (new connects are refused) and cuts its connections;
- reset_peer sends an RST only on connections that were opened while it was present;
- removing a timeout toxic closes the connections it was holding.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests
import toxiproxy

import harness
from harness import HarnessError

EMBEDDED_MARK = "hstream-embedded"
DEFAULT_PORT = 8474


class ToxiproxyError(HarnessError):
    """Toxiproxy is unreachable, failed to start, or refused a request."""


@dataclass
class ToxiproxyHandle:
    """A Toxiproxy server the harness can drive; `stop()` ends it if the harness started it."""

    url: str
    kind: Literal["embedded", "real"]
    version: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _temp_dir: Path | None = field(default=None, repr=False)
    _session: requests.Session = field(default_factory=requests.Session, repr=False)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or DEFAULT_PORT

    @property
    def client(self) -> toxiproxy.Toxiproxy:
        """A toxiproxy-python client for this server.

        toxiproxy-python keeps its server address in a class attribute, shared by every
        client in the process; reading this property points it at this server again.
        """
        server = toxiproxy.Toxiproxy()
        self._aim_shared_client()
        return server

    def _aim_shared_client(self) -> None:
        toxiproxy.Toxiproxy().update_api_consumer(self.host, self.port)

    # -- REST calls (explicit URL, so several servers in one process never mix up) --

    def request(self, method: str, path: str, body: Any = None) -> requests.Response:
        """One raw API call; the response is returned whatever its status."""
        try:
            return self._session.request(method, self.url + path, json=body, timeout=30)
        except requests.RequestException as exc:
            raise ToxiproxyError(
                f"Toxiproxy at {self.url} did not answer {method} {path}: {exc}"
                + (f" (server log: {self.log_path})" if self.log_path else "")) from exc

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.request(method, path, body)
        if response.status_code >= 300:
            raise ToxiproxyError(
                f"Toxiproxy refused {method} {path} {body!r}: HTTP {response.status_code} "
                f"{response.text.strip()}")
        return response.json() if response.content else None

    def create_proxy(self, name: str, listen: str, upstream: str,
                     enabled: bool = True) -> toxiproxy.Proxy:
        """Create a proxy; `listen` may use port 0, the returned proxy's `.listen` has the
        real port. The result is a toxiproxy-python Proxy (add_toxic, down(), destroy())."""
        info = self._call("POST", "/proxies",
                          {"name": name, "listen": listen, "upstream": upstream,
                           "enabled": enabled})
        # the returned Proxy's methods use toxiproxy-python's shared address: aim it here
        self._aim_shared_client()
        return toxiproxy.Proxy(**info)

    def proxy(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", _path(name)))

    def proxies(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proxies"))

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", _path(name))

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        return dict(self._call("POST", _path(name), {"enabled": enabled}))

    def add_toxic(self, proxy: str, type: str, attributes: dict[str, int] | None = None, *,
                  stream: str = "downstream", name: str | None = None,
                  toxicity: float = 1.0) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type, "stream": stream, "toxicity": toxicity,
                                "attributes": attributes or {}}
        if name is not None:
            body["name"] = name
        return dict(self._call("POST", _path(proxy, "toxics"), body))

    def update_toxic(self, proxy: str, toxic: str, attributes: dict[str, int] | None = None,
                     toxicity: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"attributes": attributes or {}}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return dict(self._call("POST", _path(proxy, "toxics", toxic), body))

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", _path(proxy, "toxics", toxic))

    @contextlib.contextmanager
    def toxic(self, proxy: str, type: str, attributes: dict[str, int] | None = None, *,
              stream: str = "downstream", name: str | None = None) -> Iterator[dict[str, Any]]:
        """A toxic present for the duration of the block (at toxicity 1.0)."""
        created = self.add_toxic(proxy, type, attributes, stream=stream, name=name)
        try:
            yield created
        finally:
            with contextlib.suppress(ToxiproxyError):
                self.remove_toxic(proxy, created["name"])

    def populate(self, proxies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self._call("POST", "/populate", proxies)["proxies"])

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

    def stop(self) -> None:
        """End the server if the harness started it (idempotent, callable from any thread,
        e.g. a fixture and the atexit hook at once); a connected server is left running."""
        with self._stop_lock:
            self._session.close()
            if self.process is not None:
                _terminate(self.process)
                self.process = None
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None

    def __enter__(self) -> ToxiproxyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _path(proxy: str, *rest: str) -> str:
    """An API path under /proxies, each name quoted whole (names may hold '/' or spaces)."""
    return "/".join(["/proxies", *(quote(part, safe="") for part in (proxy, *rest))])


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _read_version(url: str, timeout: float = 3.0) -> str:
    response = requests.get(url + "/version", timeout=timeout)
    response.raise_for_status()
    try:
        return str(response.json()["version"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()  # Toxiproxy before 2.6 answers in plain text


def connect_toxiproxy(url: str) -> ToxiproxyHandle:
    """A handle on a running Toxiproxy; raises ToxiproxyError if /version does not answer."""
    url = url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        version = _read_version(url)
    except requests.RequestException as exc:
        raise ToxiproxyError(
            f"no Toxiproxy answers at {url} ({exc.__class__.__name__}); start one there, "
            "fix the URL, or leave --toxiproxy-url unset to use the embedded server") from exc
    kind: Literal["embedded", "real"] = "embedded" if EMBEDDED_MARK in version else "real"
    return ToxiproxyHandle(url=url, kind=kind, version=version)


def _log_file(log_dir: Path | None, name: str) -> tuple[Path, Path | None]:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        return log_dir / name, None
    temp = Path(tempfile.mkdtemp(prefix="toxiproxy-"))
    return temp / name, temp


def start_toxiproxy(host: str = "127.0.0.1", port: int = 0, *, log_dir: Path | None = None,
                    startup_timeout: float = 15.0) -> ToxiproxyHandle:
    """Start the embedded server as a child process and wait until its API answers.

    The child exits when `stop()` is called, at interpreter exit, and when this process dies
    (it watches its stdin pipe). Its log goes to `log_dir/toxiproxy.log` if given, else to a
    temporary directory removed by `stop()`.
    """
    log_path, temp_dir = _log_file(log_dir, "toxiproxy.log")
    argv = [sys.executable, "-m", "harness.faults.toxiproxy", "--host", host,
            "--port", str(port), "--exit-on-stdin-eof"]
    # The child must run the very harness code this process runs, also from a source checkout
    # that is not on the child's default path.
    source_root = str(Path(harness.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (source_root, env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log_file, env=env)
    try:
        url = _await_ready_line(process, startup_timeout, log_path)
        version = _read_version(url)
    except BaseException:
        _terminate(process)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    handle = ToxiproxyHandle(url=url, kind="embedded", version=version, process=process,
                             log_path=log_path, _temp_dir=temp_dir)
    atexit.register(handle.stop)
    return handle


def _await_ready_line(process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise ToxiproxyError(
                    f"the embedded Toxiproxy did not start within {timeout:.0f}s; "
                    f"see its log {log_path}")
            data = os.read(process.stdout.fileno(), 4096)
            if not data:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise ToxiproxyError(
                    f"the embedded Toxiproxy exited with code {process.wait()}: "
                    f"{' / '.join(tail) or 'no output'} (log {log_path})")
            buffer += data
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith("READY "):
        raise ToxiproxyError(f"the embedded Toxiproxy printed {line!r} instead of READY")
    return line.split(" ", 1)[1]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_real_toxiproxy(binary: str, host: str = "127.0.0.1", port: int = 0, *,
                         log_dir: Path | None = None,
                         startup_timeout: float = 15.0) -> ToxiproxyHandle:
    """Start a Go `toxiproxy-server` binary and wait until its API answers."""
    port = port or _free_port(host)
    url = f"http://{host}:{port}"
    log_path, temp_dir = _log_file(log_dir, "toxiproxy-server.log")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([binary, "-host", host, "-port", str(port)],
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            version = _read_version(url, timeout=1.0)
            break
        except requests.RequestException:
            if process.poll() is not None or time.monotonic() > deadline:
                _terminate(process)
                if temp_dir is not None:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                raise ToxiproxyError(
                    f"{binary} did not answer on {url} within {startup_timeout:.0f}s "
                    f"(exit code {process.returncode}); see {log_path}") from None
            time.sleep(0.1)
    kind: Literal["embedded", "real"] = "embedded" if EMBEDDED_MARK in version else "real"
    handle = ToxiproxyHandle(url=url, kind=kind, version=version, process=process,
                             log_path=log_path, _temp_dir=temp_dir)
    atexit.register(handle.stop)
    return handle


def find_toxiproxy(url: str | None = None, *, host: str = "127.0.0.1",
                   log_dir: Path | None = None) -> ToxiproxyHandle:
    """The explicit URL if given, else `toxiproxy-server` from PATH, else the embedded one."""
    if url:
        return connect_toxiproxy(url)
    binary = shutil.which("toxiproxy-server")
    if binary is not None:
        return start_real_toxiproxy(binary, host, log_dir=log_dir)
    return start_toxiproxy(host, log_dir=log_dir)


def main(argv: list[str] | None = None) -> int:
    """Run the embedded server in the foreground (also the container entry point)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.faults.toxiproxy",
        description="Toxiproxy-compatible server (REST API v2.x) for the HStreamDB harness")
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"API port, 0 for any free one (default {DEFAULT_PORT})")
    parser.add_argument("--config", type=Path,
                        help="JSON list of proxies to create at start, as for POST /populate")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when stdin closes (a parent process died)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port; give 0..65535")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config} is not a readable file")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from harness.faults.toxiproxy_server.server import serve

    try:
        asyncio.run(serve(args.host, args.port, args.config, args.exit_on_stdin_eof))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
