"""The process side of the driver protocol (PROTOCOL.md): read requests, answer in order.

A driver subclasses `DriverLoop` with one `async op_<name>(**args)` method per operation and
runs `main()`. Errors are classified here, once, with Jepsen's meaning, so the Python and raw
drivers cannot drift apart on what counts as indeterminate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import traceback
from typing import Any

import grpc

from harness.history import classify_error


class Unsupported(Exception):
    """The client cannot do this (an op, or an argument value such as a compression)."""


class Rejected(Exception):
    """The client refused the request before sending anything: a definite failure."""


class ClientHung(Exception):
    """The client's call outlived the driver's op deadline: unknown outcome."""


def classify(error: BaseException) -> tuple[str, str | None]:
    """(`fail` | `info`, gRPC status name or None) for an error a client raised."""
    if isinstance(error, Unsupported):
        return "fail", "UNSUPPORTED"
    if isinstance(error, Rejected):
        return "fail", None
    if isinstance(error, grpc.RpcError):
        # One rule for every recorder: harness.history decides what is definite.
        code = error.code()  # type: ignore[attr-defined]
        return classify_error(error), (code.name if code is not None else "UNKNOWN")
    if isinstance(error, ClientHung):
        # The driver gave up, not the client: no gRPC status to report (PROTOCOL.md).
        return "info", None
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "info", "DEADLINE_EXCEEDED"
    # Anything else happened somewhere inside the client, possibly after the request left:
    # unknown outcome.
    return "info", None


def error_text(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        return f"{error.code()}: {error.details()}"  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


def encode_payload(record: dict[str, Any]) -> bytes | dict[str, Any]:
    """The payload a request's record asks for: JSON (a dict) or raw bytes."""
    if record.get("json") is not None:
        return dict(record["json"])
    return base64.b64decode(record.get("data", ""))


def payload_id_of(payload: bytes | dict[str, Any]) -> str | None:
    """Recover the harness's payload id (`<id>|filler` raw, or a `payload_id` field)."""
    if isinstance(payload, dict):
        value = payload.get("payload_id")
        return str(value) if value is not None else None
    head, sep, _ = payload.partition(b"|")
    return head.decode("utf-8", "replace") if sep else None


def record_out(
    record_id: tuple[int, int, int],
    key: str | None,
    payload: bytes | dict[str, Any],
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    is_json = isinstance(payload, dict)
    return {
        "record_id": list(record_id),
        "key": key or "",
        "payload_id": payload_id_of(payload),
        "data": None if is_json else base64.b64encode(payload).decode(),  # type: ignore[arg-type]
        "json": payload if is_json else None,
        "attributes": dict(attributes or {}),
    }


async def collect(
    queue: asyncio.Queue[Any], want: int, timeout_s: float, weight: Any = None
) -> list[Any]:
    """Items from `queue` until their weight (default 1 each) reaches `want` or `timeout_s`
    has passed: how a consumer op gathers what a subscription delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    got: list[Any] = []
    total = 0
    while total < want and (left := deadline - loop.time()) > 0:
        try:
            item = await asyncio.wait_for(queue.get(), timeout=left)
        except TimeoutError:
            break
        got.append(item)
        total += weight(item) if weight else 1
    return got


class DriverLoop:
    name = "driver"
    # A client whose calls carry no deadline of their own (hstreamdb's append to a paused
    # node waits forever) would hang the driver and, with it, the whole test. With this set,
    # an op still running after this many seconds (plus a fetch's own wait) is abandoned
    # and answered `info` without a status, saying that the client itself never gave up.
    op_deadline_s: float | None = None

    async def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None)
        reply: dict[str, Any] = {"id": request.get("id")}
        if handler is None:
            reply.update(type="fail", status="UNSUPPORTED", error=f"{self.name}: no op {op!r}")
            return reply
        args = request.get("args") or {}
        try:
            if self.op_deadline_s is None:
                value = await handler(**args)
            else:
                limit = self.op_deadline_s + float(args.get("timeout_ms", 0)) / 1000
                try:
                    value = await asyncio.wait_for(handler(**args), timeout=limit)
                except TimeoutError:
                    raise ClientHung(
                        f"{self.name}: {op} had not returned after {limit:.0f} s and was "
                        "abandoned (the client set no deadline of its own)"
                    ) from None
        except Exception as error:  # every client error becomes a classified response
            kind, status = classify(error)
            reply.update(type=kind, status=status, error=error_text(error))
            print(f"[{self.name}] {op} -> {kind}: {error_text(error)}", file=sys.stderr)
            if status is None and not isinstance(error, Rejected | ClientHung):
                traceback.print_exc(file=sys.stderr)
        else:
            reply.update(type="ok", value=value if value is not None else {})
        return reply

    async def op_close(self) -> dict[str, Any]:
        return {}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                request = json.loads(line)
            except ValueError:
                reply = {
                    "id": None,
                    "type": "fail",
                    "status": "UNSUPPORTED",
                    "error": f"not a JSON request: {line[:200]!r}",
                }
                request = {}
            else:
                reply = await self.dispatch(request)
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if request.get("op") == "close":
                break

    def main(self) -> None:
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass
