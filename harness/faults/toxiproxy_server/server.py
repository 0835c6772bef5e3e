"""The embedded server process: the proxy loop on the main thread, HTTP on a helper thread.

It prints one line `READY http://HOST:PORT` on stdout once the API answers, so a parent that
asked for port 0 learns the real port. It stops on SIGTERM/SIGINT and, when asked to, when its
stdin reaches EOF: a parent that dies (even by SIGKILL) closes that pipe, so the server can
never outlive the test run that started it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from harness.faults.toxiproxy_server.api import ApiHttpServer, ToxiproxyApi

log = logging.getLogger("toxiproxy.server")


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` when stdin reaches EOF; read on the loop (no thread holds stdin's lock)."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    try:
        loop.add_reader(fd, readable)
    except OSError:
        # epoll refuses regular files and /dev/null: there is no parent pipe to watch
        log.warning("stdin is not a pipe or socket; --exit-on-stdin-eof has no effect")


async def serve(host: str, port: int, config: Path | None = None,
                exit_on_stdin_eof: bool = False) -> None:
    loop = asyncio.get_running_loop()
    api = ToxiproxyApi()
    stop = asyncio.Event()
    if config is not None:
        status, body = await api.populate(config.read_bytes())
        if status >= 300:
            raise SystemExit(f"toxiproxy: cannot populate proxies from {config}: {body}")
    ApiHttpServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        httpd = ApiHttpServer((host, port), api, loop)
    except OSError as exc:
        raise SystemExit(
            f"toxiproxy: cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "choose a free port (or 0 for any)") from exc
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_on_stdin_eof:
        _watch_stdin(loop, stop)
    httpd.serve_in_thread()
    bound_host, bound_port = str(httpd.server_address[0]), int(httpd.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"READY http://{shown}:{bound_port}", flush=True)
    log.info("toxiproxy API on %s:%s", bound_host, bound_port)
    try:
        await stop.wait()
    finally:
        await api.shutdown()
        await loop.run_in_executor(None, httpd.shutdown)
        httpd.server_close()
        log.info("toxiproxy stopped")

