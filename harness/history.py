"""Histories: what clients and the nemesis did, as plain data (Jepsen's shape).

A history is a list of `Op`s, written as JSON lines (one op per line) while the test runs, so
a crashed run still leaves evidence and any checker can be re-run on the saved file
(`python -m harness.checkers <history.jsonl>`).

Every client operation is two ops from the same `process`: an `invoke` when it starts and a
completion when it ends:

* `ok`   -- it happened;
* `fail` -- it definitely did not happen (the server rejected it);
* `info` -- unknown: it may or may not have happened (timeout, UNAVAILABLE, connection lost).

`classify_error` decides between `fail` and `info`. A process has at most one operation in
flight, except producers that batch: their completions are matched by `payload_id` (see
`pair_completions`). `time` is `time.monotonic_ns()` of the recording process; only
differences between times of one history mean anything.

Op conventions (the checkers read exactly these; producers must write them):

``f="append"``
    value = ``{"stream", "key", "payload_id", "shard"}``; `payload_id` is a unique id the
    producer put inside the record's payload, so a read can say which append it saw. The
    `ok` completion repeats the value and adds ``"record_id": [shard, batch, index]``.
``f="read"`` / ``"fetch"``
    the completion's value = ``{"records": [{"payload_id", "record_id": [shard, batch,
    index], "key", "consumer"}], "final": bool}`` and optionally ``"stream"``,
    ``"subscription"``, ``"consumer"`` and ``"complete": true`` (the read returned the whole
    stream from its start as of when it began: a fresh reader from EARLIEST to the tail).
    A ``final`` read is the last read of the run and is complete by definition.
    `fetch` is one batch delivered by a subscription (StreamingFetch) to `consumer`.
``f="drain"``
    the end of consumption: invoked when the producers are done, completed when the
    consumers have caught up; value ``{"subscription"}`` (or ``{"stream"}``). Appends
    acknowledged before its invocation must have been read or delivered by the end.
``f="ack"``
    value = ``{"subscription", "consumer", "record_ids": [[shard, batch, index], ...]}``;
    the ack is taken as sent at its `invoke` time.
``f="subscribe"``
    value = ``{"subscription", "stream", "ack_timeout_s", "offset": "earliest"|"latest"}``.
``f="consume"``
    a subscription consumer's lifetime: `invoke` when its stream opens, value =
    ``{"subscription", "consumer"}``; `ok` when it closed cleanly, `info`/`fail` when the
    stream broke.
``f="view"``
    a membership sample: value = ``{"observer": id, "view": {member_id: state}}`` with
    state one of alive/suspect/dead (HServer node states Running/Unavailable/Dead are
    accepted too); member ids are HServer ids as strings.
nemesis ops
    ``process="nemesis"``, ``f`` = the fault's name, value = the fault as data (see
    harness.nemesis); the completion adds ``"down"``/``"up"``: the HServer ids the
    fault made unreachable or brought back, which is the truth membership is judged against.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import grpc

from harness import HarnessError

OpType = Literal["invoke", "ok", "fail", "info"]
OP_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
READ_FS: frozenset[str] = frozenset({"read", "fetch", "drain"})


class HistoryFormatError(HarnessError):
    """A history file that is not JSON lines of ops; the message names the file and line."""


@dataclass(slots=True)
class Op:
    """One event of a history. JSON-serialisable when `value` and `extra` are."""

    index: int
    process: int | str
    type: str
    f: str
    value: Any = None
    time: int = 0
    node: str | int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
            "time": self.time,
        }
        if self.node is not None:
            d["node"] = self.node
        if self.error is not None:
            d["error"] = self.error
        if self.extra:
            d["extra"] = self.extra
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=_json_default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Op:
        try:
            # positional: index, process, type, f, value, time, node, error, extra
            op = cls(
                int(d["index"]),
                d["process"],
                d["type"],
                d["f"],
                d.get("value"),
                int(d.get("time", 0)),
                d.get("node"),
                d.get("error"),
                dict(d.get("extra") or {}),
            )
        except KeyError as exc:
            raise ValueError(f"op has no {exc.args[0]!r} field") from None
        if op.type not in OP_TYPES:
            raise ValueError(f"op type {op.type!r} is not one of {sorted(OP_TYPES)}")
        return op

    @property
    def is_invoke(self) -> bool:
        return self.type == "invoke"

    @property
    def is_nemesis(self) -> bool:
        return self.process == "nemesis"


def _json_default(obj: Any) -> Any:
    # Sets and tuples show up in values built by workloads (record ids, node sets).
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable in a history op")


# -- error classification ---------------------------------------------------------------------

# Status codes after which the server certainly did not apply the request.
_DEFINITE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# FAILED_PRECONDITION is definite only with an HStreamDB error code that is raised before
# anything is written: stream has subscriptions (202), subscription on a missing stream (302),
# subscription has consumers (305), wrong server (800). jepsen.hstream treats the bare status
# as indeterminate, and so do we for any other code.
_DEFINITE_PRECONDITION_CODES = frozenset({202, 302, 305, 800})
_ERROR_CODE = re.compile(r'"error"\s*:\s*(\d+)')


def hstream_error_code(details: str | None) -> int | None:
    """The HStreamDB error number in a status message `{"error": N, ...}`, if there is one."""
    if not details:
        return None
    try:
        parsed = json.loads(details)
    except ValueError:
        m = _ERROR_CODE.search(details)
        return int(m.group(1)) if m else None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), int):
        return int(parsed["error"])
    return None


def classify_error(exc: BaseException) -> Literal["fail", "info"]:
    """`fail` when the operation certainly did not happen, else `info` (indeterminate).

    Jepsen's rule: only an answer from the server that rejects the request is definite.
    Timeouts, DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED, ABORTED, INTERNAL, UNKNOWN,
    connection loss and any exception we cannot read are `info`: the request may have been
    applied before the answer was lost.
    """
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            code = exc.code()
            details = exc.details() if hasattr(exc, "details") else None
        except Exception:  # a half-built error object tells us nothing definite
            return "info"
        if code in _DEFINITE:
            return "fail"
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            hcode = hstream_error_code(details)
            return "fail" if hcode in _DEFINITE_PRECONDITION_CODES else "info"
        return "info"
    if isinstance(exc, DefiniteFailure):
        return "fail"
    return "info"


class DefiniteFailure(Exception):
    """Raise from a workload when it knows the operation was not sent (e.g. refused locally)."""


def describe_error(exc: BaseException) -> str:
    """A one-line description for the op's `error` field: status name and server message."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            code = exc.code()
            details = exc.details() if hasattr(exc, "details") else ""
            return f"{code.name}: {details}" if details else code.name
        except Exception:
            pass
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"timeout: {exc}" if str(exc) else "timeout"
    return f"{type(exc).__name__}: {exc}"


# -- recording ---------------------------------------------------------------------------------


def history_path(name: str, reports_dir: str | Path | None = None) -> Path:
    """<reports>/histories/<name>.jsonl with `name` (e.g. a pytest node id) made file-safe.

    <reports> is `reports_dir` if given, else the run's reports root (the
    HSTREAM_CONFORMANCE_REPORTS environment variable, else ./reports).
    """
    from harness.cleanup import reports_root

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "history"
    root = Path(reports_dir) if reports_dir is not None else reports_root()
    return root / "histories" / f"{safe}.jsonl"


class History:
    """A thread- and asyncio-safe recorder of ops, also writing them to a JSON lines file.

    Recording never awaits and holds a `threading.Lock` only for the append and the write,
    so it is safe from threads and from coroutines of one or more event loops.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.ops: list[Op] = []
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")

    # -- raw recording
    def record(
        self,
        process: int | str,
        type: str,
        f: str,
        value: Any = None,
        *,
        node: str | int | None = None,
        error: str | None = None,
        time_ns: int | None = None,
        **extra: Any,
    ) -> Op:
        if type not in OP_TYPES:
            raise ValueError(f"op type {type!r} is not one of {sorted(OP_TYPES)}")
        with self._lock:
            op = Op(
                index=len(self.ops),
                process=process,
                type=type,
                f=f,
                value=value,
                time=time.monotonic_ns() if time_ns is None else time_ns,
                node=node,
                error=error,
                extra=extra,
            )
            self.ops.append(op)
            if self._file is not None:
                self._file.write(op.to_json())
                self._file.write("\n")
                self._file.flush()
        return op

    def invoke(
        self, process: int | str, f: str, value: Any = None, *, node: str | int | None = None,
        **extra: Any,
    ) -> Op:
        return self.record(process, "invoke", f, value, node=node, **extra)

    def complete(
        self,
        invocation: Op,
        type: str,
        value: Any = None,
        *,
        error: str | None = None,
        **extra: Any,
    ) -> Op:
        """The completion of `invocation`; `value` defaults to the invocation's value."""
        if type == "invoke":
            raise ValueError("a completion is ok, fail or info, not invoke")
        return self.record(
            invocation.process,
            type,
            invocation.f,
            invocation.value if value is None else value,
            node=invocation.node,
            error=error,
            **extra,
        )

    def ok(self, invocation: Op, value: Any = None, **extra: Any) -> Op:
        return self.complete(invocation, "ok", value, **extra)

    def fail(self, invocation: Op, error: str, value: Any = None, **extra: Any) -> Op:
        return self.complete(invocation, "fail", value, error=error, **extra)

    def info(self, invocation: Op, error: str, value: Any = None, **extra: Any) -> Op:
        return self.complete(invocation, "info", value, error=error, **extra)

    def error(self, invocation: Op, exc: BaseException, **extra: Any) -> Op:
        """Complete `invocation` as fail or info according to `classify_error(exc)`."""
        return self.complete(invocation, classify_error(exc), error=describe_error(exc), **extra)

    def operation(
        self, process: int | str, f: str, value: Any = None, *, node: str | int | None = None
    ) -> Operation:
        """`with history.operation(p, "append", v) as op: ...; op.ok({...})` (or `async with`).

        An exception in the block is recorded as fail/info (classify_error) and swallowed,
        except cancellation and KeyboardInterrupt, which are recorded as info and re-raised.
        A block that ends without a completion is recorded as ok with the invoke's value.
        """
        return Operation(self, process, f, value, node)

    # -- reading
    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self.ops))

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def load(cls, path: str | Path) -> History:
        h = cls()
        h.ops = load_ops(path)
        h.path = Path(path)
        return h


class Operation:
    """One in-flight operation; see `History.operation`."""

    def __init__(
        self,
        history: History,
        process: int | str,
        f: str,
        value: Any,
        node: str | int | None,
    ) -> None:
        self.history = history
        self.process = process
        self.f = f
        self.value = value
        self.node = node
        self.invocation: Op | None = None
        self.completion: Op | None = None

    def ok(self, value: Any = None, **extra: Any) -> Op:
        return self._complete("ok", value, None, extra)

    def fail(self, error: str, value: Any = None) -> Op:
        return self._complete("fail", value, error, {})

    def info(self, error: str, value: Any = None) -> Op:
        return self._complete("info", value, error, {})

    def _complete(self, type: str, value: Any, error: str | None, extra: dict[str, Any]) -> Op:
        if self.invocation is None:
            raise RuntimeError("operation completed before it was entered")
        if self.completion is not None:
            raise RuntimeError(f"operation {self.invocation.index} already completed")
        self.completion = self.history.complete(
            self.invocation, type, value, error=error, **extra
        )
        return self.completion

    def __enter__(self) -> Operation:
        self.invocation = self.history.invoke(self.process, self.f, self.value, node=self.node)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self.completion is not None:
            # Completed, then something else failed in the block: that is the caller's error.
            return False
        if exc is None:
            self.ok()
            return False
        if not isinstance(exc, Exception):
            # Cancelled or interrupted mid-flight: the outcome is unknown; let it propagate.
            self._complete("info", None, describe_error(exc) or type(exc).__name__, {})
            return False
        assert self.invocation is not None
        self.completion = self.history.error(self.invocation, exc)
        return True

    async def __aenter__(self) -> Operation:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)


# -- loading and pairing -----------------------------------------------------------------------


def load_ops(path: str | Path) -> list[Op]:
    """Read a JSON lines history. A torn last line (the writer was killed) is skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryFormatError(f"history file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryFormatError(f"cannot read history file {p}: {exc}") from None
    # Millions of fresh dicts and no cycles: the cyclic collector would only rescan them.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_lines(p, text)
    finally:
        if was_enabled:
            gc.enable()


def _parse_lines(p: Path, text: str) -> list[Op]:
    """The ops of a JSON lines text: all whole lines in one JSON array (one call into the
    parser instead of one per line), then a torn last line on its own; any line that is
    not exactly one op is found, and named, line by line."""
    whole = len(text) if text.endswith("\n") else text.rfind("\n") + 1
    body = text[: whole - 1] if whole else ""
    from_dict = Op.from_dict
    try:
        values = json.loads("[" + body.replace("\n", ",") + "]") if body else []
        if body and len(values) != body.count("\n") + 1:
            raise ValueError("not one op per line")
        ops = [from_dict(d) for d in values]
    except (ValueError, TypeError, AttributeError):
        return _parse_line_by_line(p, text)
    tail = text[whole:]
    if tail.strip():
        try:
            ops.append(from_dict(json.loads(tail)))
        except (ValueError, TypeError, AttributeError):
            pass  # the writer was killed mid-line
    return ops


def _parse_line_by_line(p: Path, text: str) -> list[Op]:
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    loads = json.loads
    from_dict = Op.from_dict
    ops: list[Op] = []
    last = len(lines) - 1
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            ops.append(from_dict(loads(line)))
        except (ValueError, TypeError, AttributeError) as exc:
            if n == last and torn_tail:
                break
            raise HistoryFormatError(
                f"{p}:{n + 1}: not a history op ({exc}); each line must be a JSON object "
                'with index, process, type, f, value, time (as written by harness.history)'
            ) from None
    return ops


# The ops list `check_all` checked once and hands to every checker (see shared_ops).
_SHARED_OPS: ContextVar[list[Op] | None] = ContextVar("hstream_conformance_shared_ops",
                                                      default=None)


@contextmanager
def shared_ops(ops: list[Op]) -> Iterator[None]:
    """Inside: `as_ops(ops)` is `ops` itself, not a copy. For `check_all`, which checks its
    list once and runs checkers that only read it: each would otherwise check and copy a
    million ops again."""
    token = _SHARED_OPS.set(ops)
    try:
        yield
    finally:
        _SHARED_OPS.reset(token)


def as_ops(history: History | str | Path | Iterable[Op | Mapping[str, Any]]) -> list[Op]:
    """Ops from a History, a JSON lines path, or an iterable of Ops or op dicts (a new list,
    except inside `shared_ops` for its list)."""
    if history is _SHARED_OPS.get():
        return history  # type: ignore[return-value]
    if isinstance(history, History):
        return history.snapshot()
    if isinstance(history, str | Path):
        return load_ops(history)
    if type(history) is list and set(map(type, history)) <= {Op}:
        return list(history)  # the usual case, checked and copied in C
    out: list[Op] = []
    for item in history:
        out.append(item if isinstance(item, Op) else Op.from_dict(item))
    return out


def write_ops(ops: Iterable[Op], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for op in ops:
            fh.write(op.to_json())
            fh.write("\n")
    return p


def pair_completions(ops: Iterable[Op]) -> dict[int, Op]:
    """completion op index -> its invocation.

    A completion belongs to the oldest open invocation of the same process and f; for
    appends with a `payload_id` (batching producers keep several in flight) it must also
    carry the same payload id. Completions without an invocation are left out.
    """
    open_appends: dict[tuple[Any, Any], Op] = {}
    open_ops: dict[tuple[Any, str], deque[Op]] = {}
    pairs: dict[int, Op] = {}
    for op in ops:
        v = op.value
        pid = v.get("payload_id") if op.f == "append" and isinstance(v, dict) else None
        if op.type == "invoke":
            if pid is not None:
                open_appends[(op.process, pid)] = op
            else:
                open_ops.setdefault((op.process, op.f), deque()).append(op)
            continue
        if pid is not None:
            inv = open_appends.pop((op.process, pid), None)
            if inv is not None:
                pairs[op.index] = inv
            continue
        pending = open_ops.get((op.process, op.f))
        if pending:
            pairs[op.index] = pending.popleft()
    return pairs
