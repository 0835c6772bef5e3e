"""Proxies and their toxic chains: the state behind Toxiproxy's REST API.

Everything here runs on the server's one asyncio loop, so no locks are needed beyond the
per-collection asyncio lock that keeps a chain change from interleaving with another.
Errors carry Toxiproxy's exact messages and status codes (its api.go), since clients
branch on the status (409 exists, 404 not found, 400 bad input).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from harness.faults.toxiproxy_server.links import Connection
from harness.faults.toxiproxy_server.toxics import (
    DIRECTIONS,
    TOXIC_TYPES,
    BadAttributes,
    ToxicSpec,
    json_kind,
)

log = logging.getLogger("toxiproxy.proxies")


class ApiError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}

    def joined(self, detail: str) -> ApiError:
        return ApiError(f"{self.message}: {detail}", self.status)


BAD_REQUEST_BODY = ApiError("bad request body", 400)
MISSING_FIELD = ApiError("missing required field", 400)
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


def split_host_port(address: str) -> tuple[str, int]:
    """Parse Go's "host:port" / "[v6]:port" / ":port" forms."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ApiError(f"listen tcp: address {address}: missing port in address", 500)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise ApiError(f"listen tcp: address {address}: invalid port", 500)
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_listen(address: str) -> str:
    """The address a listener on `address` reports, with names resolved like Go's
    ResolveTCPAddr; an empty host means every IPv4 interface."""
    host, port = split_host_port(address)
    if not host:
        return join_host_port("0.0.0.0", port)
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise ApiError(f"listen tcp {address}: {exc}", 500) from exc
    return join_host_port(str(resolved), port)


class ToxicCollection:
    """The toxic chains of one proxy (one per direction) and the live links they apply to."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.chains: dict[str, list[ToxicSpec]] = {d: [] for d in DIRECTIONS}
        self.lock = asyncio.Lock()

    def all(self) -> list[ToxicSpec]:
        return [spec for d in DIRECTIONS for spec in self.chains[d]]

    def find(self, name: str) -> ToxicSpec | None:
        return next((s for s in self.all() if s.name == name), None)

    def _links(self, direction: str) -> list[Any]:
        return [c.links[direction] for c in list(self.proxy.connections) if not c.closed]

    async def add(self, body: Any) -> ToxicSpec:
        if not isinstance(body, dict):
            raise BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(body)} into Go value of type "
                "toxics.ToxicWrapper")
        stream = body.get("stream", "downstream")
        type_name = body.get("type", "")
        name = body.get("name", "")
        toxicity = body.get("toxicity", 1.0)
        for key, value, kind in (("stream", stream, str), ("type", type_name, str),
                                 ("name", name, str)):
            if not isinstance(value, kind):
                raise BAD_REQUEST_BODY.joined(
                    f"json: cannot unmarshal {json_kind(value)} into Go struct field "
                    f"ToxicWrapper.{key} of type string")
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
            raise BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(toxicity)} into Go struct field "
                "ToxicWrapper.toxicity of type float32")
        if stream.lower() not in DIRECTIONS:
            raise INVALID_STREAM
        if not name:
            name = f"{type_name}_{stream}"
        toxic_class = TOXIC_TYPES.get(type_name)
        if toxic_class is None:
            raise INVALID_TOXIC_TYPE
        if self.find(name) is not None:
            raise TOXIC_EXISTS
        toxic = toxic_class()
        try:
            toxic.update(body.get("attributes"))
        except BadAttributes as exc:
            raise BAD_REQUEST_BODY.joined(str(exc)) from exc
        direction = stream.lower()
        spec = ToxicSpec(name=name, stream=stream, toxicity=float(toxicity), toxic=toxic)
        async with self.lock:
            chain = self.chains[direction]
            chain.append(spec)
            spec.index = len(chain)  # stage index: stage 0 of every link is the hidden noop
            await asyncio.gather(*(link.add_toxic(spec) for link in self._links(direction)))
        log.info("proxy %s: added toxic %s", self.proxy.name, spec.to_json())
        return spec

    async def update(self, name: str, body: Any) -> ToxicSpec:
        spec = self.find(name)
        if spec is None:
            raise TOXIC_NOT_FOUND
        if not isinstance(body, dict):
            raise BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(body)} into Go value of type struct")
        toxicity = body.get("toxicity", spec.toxicity)
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
            raise BAD_REQUEST_BODY.joined(
                f"json: cannot unmarshal {json_kind(toxicity)} into Go struct field "
                ".toxicity of type float32")
        try:
            spec.toxic.update(body.get("attributes"))
        except BadAttributes as exc:
            raise BAD_REQUEST_BODY.joined(str(exc)) from exc
        spec.toxicity = float(toxicity)
        async with self.lock:
            direction = spec.stream.lower()
            await asyncio.gather(
                *(link.update_toxic(spec.index) for link in self._links(direction)))
        log.info("proxy %s: updated toxic %s", self.proxy.name, spec.to_json())
        return spec

    async def remove(self, name: str) -> None:
        spec = self.find(name)
        if spec is None:
            raise TOXIC_NOT_FOUND
        async with self.lock:
            await self._remove(spec)
        log.info("proxy %s: removed toxic %s", self.proxy.name, name)

    async def _remove(self, spec: ToxicSpec) -> None:
        direction = spec.stream.lower()
        chain = self.chains[direction]
        chain.remove(spec)
        await asyncio.gather(*(link.remove_toxic(spec.index) for link in self._links(direction)))
        for i, other in enumerate(chain):
            other.index = i + 1
        spec.index = -1

    async def reset(self) -> None:
        async with self.lock:
            for direction in DIRECTIONS:
                while self.chains[direction]:
                    await self._remove(self.chains[direction][0])


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics = ToxicCollection(self)
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._accepted = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.toxics.all()],
        }

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = split_host_port(canonical_listen(self.listen))
        try:
            self._server = await asyncio.start_server(
                self._accept, host, port, reuse_address=True)
        except OSError as exc:
            # Go's wording, e.g. "listen tcp 127.0.0.1:8000: bind: address already in use"
            reason = (exc.strerror or str(exc)).lower()
            raise ApiError(f"listen tcp {self.listen}: bind: {reason}", 500) from exc
        bound = self._server.sockets[0].getsockname()
        self.listen = join_host_port(host, bound[1])
        self.enabled = True
        log.info("proxy %s: listening on %s, upstream %s", self.name, self.listen, self.upstream)

    def stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections):
            connection.cut()
        log.info("proxy %s: stopped", self.name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._accepted += 1
        name = f"{self.name}#{self._accepted} {peer}"
        server = self._server
        try:
            host, port = split_host_port(self.upstream)
            upstream = await asyncio.open_connection(host, port)
        except (OSError, ApiError) as exc:
            log.warning("proxy %s: cannot reach upstream %s: %s", self.name, self.upstream, exc)
            writer.close()
            return
        if self._server is not server or not self.enabled:
            # the proxy was stopped while we dialled: this client must not get through
            upstream[1].close()
            writer.transport.abort()
            return
        connection = Connection(
            name, (reader, writer), upstream,
            {d: list(self.toxics.chains[d]) for d in DIRECTIONS},
            self.connections.discard,
        )
        self.connections.add(connection)
        connection.start()
        log.info("connection %s accepted", name)

    async def update(self, body: dict[str, Any]) -> None:
        """POST /proxies/{name}: a new listen/upstream restarts the proxy, dropping its
        connections; `enabled` starts or stops it."""
        # absent or null fields keep their value, as with Go's decode into a prefilled struct
        listen = body.get("listen") or self.listen
        upstream = body.get("upstream") or self.upstream
        enabled = self.enabled if body.get("enabled") is None else body["enabled"]
        if canonical_listen(listen) != self.listen or upstream != self.upstream:
            self.stop()
            self.listen = listen
            self.upstream = upstream
        if enabled != self.enabled:
            if enabled:
                await self.start()
            else:
                self.stop()


class ProxyCollection:
    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise PROXY_NOT_FOUND
        return proxy

    async def add(self, proxy: Proxy, start: bool) -> None:
        async with self.lock:
            if proxy.name in self.proxies:
                raise PROXY_EXISTS
            if start:
                await proxy.start()
            self.proxies[proxy.name] = proxy

    async def add_or_replace(self, proxy: Proxy, start: bool) -> Proxy:
        async with self.lock:
            existing = self.proxies.get(proxy.name)
            if existing is not None:
                if (canonical_listen(proxy.listen) == existing.listen
                        and proxy.upstream == existing.upstream):
                    return existing
                existing.stop()
            if start:
                await proxy.start()
            self.proxies[proxy.name] = proxy
            return proxy

    async def remove(self, name: str) -> None:
        async with self.lock:
            proxy = self.get(name)
            proxy.stop()
            del self.proxies[name]

    async def clear(self) -> None:
        async with self.lock:
            for proxy in self.proxies.values():
                proxy.stop()
            self.proxies.clear()

