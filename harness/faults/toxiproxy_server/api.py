"""Toxiproxy's REST API (v2.x routes, bodies, status codes and error JSON).

HTTP parsing is the standard library's (a threading HTTP server); every request is turned
into a coroutine on the proxy loop, so proxy state is only ever touched from that loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from harness.faults.toxiproxy_server.proxies import (
    BAD_REQUEST_BODY,
    MISSING_FIELD,
    TOXIC_NOT_FOUND,
    ApiError,
    Proxy,
    ProxyCollection,
)
from harness.faults.toxiproxy_server.toxics import json_kind

log = logging.getLogger("toxiproxy.api")

# Semver build metadata marks this implementation while staying parseable as 2.x by clients.
VERSION = "2.9.0+hstream-embedded"

Response = tuple[int, Any]  # status, JSON-able body (None: no body)


def decode_body(raw: bytes) -> Any:
    if not raw.strip():
        raise BAD_REQUEST_BODY.joined("EOF")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BAD_REQUEST_BODY.joined(f"invalid character: {exc}") from exc


def proxy_fields(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BAD_REQUEST_BODY.joined(
            f"json: cannot unmarshal {json_kind(body)} into Go value of type {what}")
    for key, kind, go_type in (("name", str, "string"), ("listen", str, "string"),
                               ("upstream", str, "string"), ("enabled", bool, "bool")):
        if key in body and body[key] is not None and not isinstance(body[key], kind):
            raise BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(body[key])} into Go struct field "
                f"Proxy.{key} of type {go_type}")
    return body


def proxies_json(proxies: list[Proxy]) -> list[dict[str, Any]] | None:
    # Go marshals an empty result slice as null
    return [p.to_json() for p in proxies] or None


class ToxiproxyApi:
    """Route table and handlers; `handle` runs on the proxy loop."""

    def __init__(self) -> None:
        self.collection = ProxyCollection()

    async def handle(self, method: str, path: str, raw: bytes) -> Response:
        parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
        try:
            return await self._route(method, parts, raw)
        except ApiError as exc:
            return exc.status, exc.to_json()

    async def _route(self, method: str, parts: list[str], raw: bytes) -> Response:
        match parts:
            case ["version"] if method == "GET":
                return 200, {"version": VERSION}
            case ["reset"] if method == "POST":
                return await self.reset()
            case ["populate"] if method == "POST":
                return await self.populate(raw)
            case ["proxies"] if method == "GET":
                return 200, {n: p.to_json() for n, p in self.collection.proxies.items()}
            case ["proxies"] if method == "POST":
                return await self.create_proxy(raw)
            case ["proxies", name] if method == "GET":
                return 200, self.collection.get(name).to_json()
            case ["proxies", name] if method in ("POST", "PATCH"):
                proxy = self.collection.get(name)
                await proxy.update(proxy_fields(decode_body(raw), "toxiproxy.Proxy"))
                return 200, proxy.to_json()
            case ["proxies", name] if method == "DELETE":
                await self.collection.remove(name)
                return 204, None
            case ["proxies", name, "toxics"] if method == "GET":
                return 200, [s.to_json() for s in self.collection.get(name).toxics.all()]
            case ["proxies", name, "toxics"] if method == "POST":
                proxy = self.collection.get(name)
                spec = await proxy.toxics.add(decode_body(raw))
                return 200, spec.to_json()
            case ["proxies", name, "toxics", toxic] if method == "GET":
                found = self.collection.get(name).toxics.find(toxic)
                if found is None:
                    raise TOXIC_NOT_FOUND
                return 200, found.to_json()
            case ["proxies", name, "toxics", toxic] if method in ("POST", "PATCH"):
                proxy = self.collection.get(name)
                spec = await proxy.toxics.update(toxic, decode_body(raw))
                return 200, spec.to_json()
            case ["proxies", name, "toxics", toxic] if method == "DELETE":
                await self.collection.get(name).toxics.remove(toxic)
                return 204, None
        known = {"version", "reset", "populate", "proxies"}
        if parts and parts[0] in known and len(parts) <= (4 if parts[0] == "proxies" else 1):
            return 405, None
        return 404, "404 page not found"

    async def create_proxy(self, raw: bytes) -> Response:
        body = proxy_fields(decode_body(raw), "toxiproxy.Proxy")
        if not body.get("name"):
            raise MISSING_FIELD.joined("name")
        if not body.get("upstream"):
            raise MISSING_FIELD.joined("upstream")
        proxy = Proxy(body["name"], body.get("listen") or "127.0.0.1:0", body["upstream"])
        enabled = body.get("enabled")
        await self.collection.add(proxy, enabled is None or enabled)
        return 201, proxy.to_json()

    async def populate(self, raw: bytes) -> Response:
        try:
            body = decode_body(raw)
            if not isinstance(body, list):
                raise BAD_REQUEST_BODY.joined(
                    f"json: cannot unmarshal {json_kind(body)} into Go value of type "
                    "[]struct { toxiproxy.Proxy; Enabled *bool \"json:\\\"enabled\\\"\" }")
            entries = [proxy_fields(entry, "toxiproxy.Proxy") for entry in body]
            # validate everything before creating anything, as Toxiproxy does
            for i, entry in enumerate(entries, start=1):
                if not entry.get("name"):
                    raise MISSING_FIELD.joined(f"name at proxy {i}")
                if not entry.get("upstream"):
                    raise MISSING_FIELD.joined(f"upstream at proxy {i}")
        except ApiError as exc:
            return exc.status, {**exc.to_json(), "proxies": None}
        done: list[Proxy] = []
        for entry in entries:
            proxy = Proxy(entry["name"], entry.get("listen") or "127.0.0.1:0", entry["upstream"])
            enabled = entry.get("enabled")
            try:
                done.append(await self.collection.add_or_replace(
                    proxy, enabled is None or enabled))
            except ApiError as exc:
                return exc.status, {**exc.to_json(), "proxies": proxies_json(done)}
        return 201, {"proxies": proxies_json(done)}

    async def reset(self) -> Response:
        for proxy in list(self.collection.proxies.values()):
            await proxy.start()
            await proxy.toxics.reset()
        return 204, None

    async def shutdown(self) -> None:
        await self.collection.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiHttpServer

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        future = asyncio.run_coroutine_threadsafe(
            self.server.api.handle(self.command, self.path, raw), self.server.loop)
        try:
            status, body = future.result(timeout=25)
        except Exception as exc:  # a bug in a handler must not hang the client
            log.exception("request %s %s failed", self.command, self.path)
            status, body = 500, {"error": f"internal error: {exc}", "status": 500}
        if body is None:
            payload = b""
        elif isinstance(body, str):
            payload = (body + "\n").encode()
        else:
            payload = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(status)
        if payload:
            ctype = "text/plain; charset=utf-8" if isinstance(body, str) else "application/json"
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ToxiproxyApi,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.loop = loop

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="toxiproxy-http",
                                  daemon=True)
        thread.start()
        return thread
