"""The harness side of the driver protocol: start a driver, send ops, record the history.

`ClientDriver` runs one driver process (PROTOCOL.md), turns each request/response pair into
history operations (`invoke`, then `ok`/`fail`/`info` as the driver classified it), and keeps
the driver's stderr as evidence. Every client — official Python, raw gRPC, Erlang — is driven
through this one class, so every checker works for every client.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness import HarnessError, credentials
from harness.history import History, Op

ERLANG_DRIVER_ENV = "HSTREAM_ERLANG_DRIVER"
CLIENTS = ("python", "raw", "erlang")


class DriverUnavailable(HarnessError):
    """This client's driver cannot run here; the message is the exact reason (a skip reason)."""


class DriverError(HarnessError):
    """The driver process broke the protocol (died, hung, or printed garbage)."""


def driver_command(client: str) -> list[str]:
    """The argv that starts `client`'s driver."""
    if client == "python":
        return [sys.executable, "-m", "harness.clients.python_driver"]
    if client == "raw":
        return [sys.executable, "-m", "harness.clients.raw_driver"]
    if client == "erlang":
        configured = os.environ.get(ERLANG_DRIVER_ENV)
        if not configured:
            raise DriverUnavailable(
                f"Erlang driver not built: set {ERLANG_DRIVER_ENV} to the command that runs "
                "docker/erlang-driver (its dependencies come from hex.pm and GitHub; see "
                "docker/erlang-driver/README.md to build it)"
            )
        argv = shlex.split(configured)
        if not Path(argv[0]).exists() and not any(
            (Path(d) / argv[0]).exists() for d in os.environ.get("PATH", "").split(os.pathsep)
        ):
            raise DriverUnavailable(
                f"{ERLANG_DRIVER_ENV}={configured!r}, but {argv[0]} does not exist"
            )
        return argv
    raise HarnessError(f"unknown client {client!r}; known clients: {', '.join(CLIENTS)}")


@dataclass
class Reply:
    type: str  # ok | fail | info
    value: Any = None
    error: str | None = None
    status: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.type == "ok"

    @property
    def unsupported(self) -> bool:
        return self.type == "fail" and self.status == "UNSUPPORTED"


def raw_payload(payload_id: str, size: int = 32) -> dict[str, Any]:
    """A raw record whose payload starts with its id, so any read can say which append it saw."""
    data = f"{payload_id}|".encode()
    data += b"x" * max(0, size - len(data))
    return {"payload_id": payload_id, "data": base64.b64encode(data).decode()}


def json_payload(payload_id: str, **fields: Any) -> dict[str, Any]:
    return {"payload_id": payload_id, "json": {"payload_id": payload_id, **fields}}


class ClientDriver:
    """One running driver. Not thread-safe: one harness process (Jepsen's meaning) each."""

    _ids = itertools.count(1)
    _live: weakref.WeakSet[ClientDriver] = weakref.WeakSet()

    def __init__(
        self,
        client: str,
        history: History | None = None,
        process: str | None = None,
        evidence_dir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.client = client
        self.history = history if history is not None else History()
        self.process = process or f"{client}-{next(self._ids)}"
        self.timeout = timeout
        self.argv = driver_command(client)
        evidence_dir = evidence_dir or Path("reports") / "drivers"
        evidence_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = evidence_dir / f"{self.process}.stderr.log"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # Ctrl-C reaches the harness, which closes drivers itself
        )
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self._request_ids = itertools.count(1)
        self.broken: str | None = None
        # Called when the client cannot do an op at all (PROTOCOL.md: UNSUPPORTED); suites
        # turn that into a skip naming the gap, never into a pass or a failure.
        self.on_unsupported: Callable[[str, Reply], None] | None = None
        ClientDriver._live.add(self)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    def running(cls) -> list[ClientDriver]:
        """Drivers of this harness process whose driver process is still alive."""
        return [d for d in list(cls._live) if d._proc.poll() is None]

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(line)
        self._replies.put(b"")

    # -- raw protocol -----------------------------------------------------------------------
    def call(self, op: str, timeout: float | None = None, **args: Any) -> Reply:
        """Send one request and wait for its response (no history)."""
        if self.broken:
            raise DriverError(f"{self.process} driver is unusable: {self.broken}")
        request_id = next(self._request_ids)
        line = json.dumps({"id": request_id, "op": op, "args": args}) + "\n"
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            self._break(f"could not send {op}: {error}")
        wait = timeout if timeout is not None else self.timeout
        try:
            raw = self._replies.get(timeout=wait)
        except queue.Empty:
            self._break(f"no answer to {op} within {wait:.0f} s")
        if not raw:
            self._break(f"exited with code {self._proc.wait(timeout=5)} during {op}")
        try:
            reply = json.loads(raw)
        except ValueError:
            self._break(f"answered {op} with non-JSON {raw[:200]!r}")
        if reply.get("id") != request_id:
            self._break(f"answered request {reply.get('id')} when {request_id} ({op}) was due")
        answer = Reply(
            type=reply.get("type", "info"),
            value=reply.get("value"),
            error=reply.get("error"),
            status=reply.get("status"),
            raw=reply,
        )
        if answer.unsupported and self.on_unsupported is not None:
            self.on_unsupported(op, answer)
        return answer

    def _break(self, why: str) -> None:
        self.broken = why
        self._kill()
        raise DriverError(f"{self.process} driver {why}; its stderr: {self.stderr_path}")

    # -- recorded operations ----------------------------------------------------------------
    def invoke(self, f: str, value: Any, op: str, node: str | None = None, **args: Any) -> Reply:
        """One recorded operation: invoke, call, then the completion the driver classified."""
        invocation = self.history.invoke(self.process, f, value, node=node, client=self.client)
        try:
            reply = self.call(op, **args)
        except DriverError as error:
            self.history.info(invocation, str(error))
            raise
        self._complete(invocation, reply, value)
        return reply

    def _complete(self, invocation: Op, reply: Reply, value: Any) -> None:
        if reply.type == "ok":
            self.history.ok(invocation, value)
        else:
            self.history.complete(
                invocation,
                reply.type if reply.type in ("fail", "info") else "info",
                error=f"{reply.status}: {reply.error}",
                status=reply.status,
            )

    def connect(self, urls: Sequence[str], token: str | None = credentials.RUN) -> Reply:
        """Connect to `urls`; on a token cluster (the run's credential, by default) every call
        of the client carries `authorization: Basic <token>`."""
        found = credentials.resolve(token)
        sent: dict[str, Any] = {"token": found} if found else {}
        # The history records that a token was sent, never the token itself.
        value = {"urls": list(urls), **({"token": True} if found else {})}
        return self.invoke("connect", value, "connect", urls=list(urls), **sent)

    def append(
        self,
        stream: str,
        records: Sequence[dict[str, Any]],
        key: str = "",
        compression: str = "none",
    ) -> Reply:
        """Append one batch; one history append per record, completed by the batch's answer."""
        invocations = [
            self.history.invoke(
                self.process,
                "append",
                {"stream": stream, "key": key, "payload_id": r["payload_id"]},
                client=self.client,
                batch=len(records),
                compression=compression,
            )
            for r in records
        ]
        try:
            reply = self.call(
                "append", stream=stream, key=key, records=list(records), compression=compression
            )
        except DriverError as error:
            for invocation in invocations:
                self.history.info(invocation, str(error))
            raise
        ids = (reply.value or {}).get("record_ids", []) if reply.ok else []
        for i, invocation in enumerate(invocations):
            if reply.ok:
                record_id = ids[i] if i < len(ids) else None
                self.history.ok(
                    invocation,
                    {
                        **invocation.value,
                        "record_id": record_id,
                        "shard": record_id[0] if record_id else None,
                    },
                )
            else:
                self._complete(invocation, reply, invocation.value)
        return reply

    def _read_op(self, f: str, op: str, meta: dict[str, Any], **args: Any) -> Reply:
        invocation = self.history.invoke(self.process, f, meta, client=self.client)
        try:
            reply = self.call(op, **args)
        except DriverError as error:
            self.history.info(invocation, str(error))
            raise
        if reply.ok:
            records = [
                {
                    "payload_id": r.get("payload_id"),
                    "record_id": r.get("record_id"),
                    "key": r.get("key"),
                    "consumer": meta.get("consumer"),
                }
                for r in (reply.value or {}).get("records", [])
            ]
            self.history.ok(invocation, {**meta, "records": records})
        else:
            self._complete(invocation, reply, meta)
        return reply

    def fetch(
        self,
        subscription: str,
        consumer: str,
        max: int = 100,
        timeout_ms: int = 1000,
        ack: bool = True,
    ) -> Reply:
        meta = {"subscription": subscription, "consumer": consumer, "final": False}
        reply = self._read_op(
            "fetch",
            "fetch",
            meta,
            subscription=subscription,
            consumer=consumer,
            max=max,
            timeout_ms=timeout_ms,
            ack=ack,
            timeout=self.timeout + timeout_ms / 1000,
        )
        if ack and reply.ok and reply.value.get("records"):
            # The driver acked what it returned: record the ack as its own operation.
            ids = [r["record_id"] for r in reply.value["records"]]
            ack_op = self.history.invoke(
                self.process,
                "ack",
                {"subscription": subscription, "consumer": consumer, "record_ids": ids},
            )
            self.history.ok(ack_op)
        return reply

    def read_shard(
        self,
        stream: str,
        shard_id: int,
        offset: Any = "earliest",
        final: bool = False,
        complete: bool = True,
    ) -> Reply:
        meta = {
            "stream": stream,
            "shard": shard_id,
            "final": final,
            "complete": complete and offset == "earliest",
        }
        return self._read_op(
            "read", "read_shard", meta, stream=stream, shard_id=shard_id, offset=offset
        )

    def subscribe(
        self,
        subscription: str,
        stream: str,
        ack_timeout: int = 30,
        max_unacked: int = 10_000,
        offset: str = "earliest",
    ) -> Reply:
        """Create a subscription; recorded as `subscribe` with `ack_timeout_s`, which the
        subscription checker needs to judge redelivery."""
        args: dict[str, Any] = {
            "subscription": subscription,
            "stream": stream,
            "ack_timeout": ack_timeout,
            "max_unacked": max_unacked,
            "offset": offset,
        }
        return self.invoke("subscribe", {**args, "ack_timeout_s": ack_timeout}, "subscribe", **args)

    def simple(self, op: str, **args: Any) -> Reply:
        """A recorded op whose value is its arguments (create_stream, subscribe, ...)."""
        return self.invoke(op, args, op, **args)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._proc.poll() is None and not self.broken:
            try:
                self.call("close", timeout=10)
            except DriverError:
                pass
        self._kill()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()

    def __enter__(self) -> ClientDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
