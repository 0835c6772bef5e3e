"""Export a saved history in Jepsen's shape: EDN op maps a Jepsen checker can read.

    hstream-conformance export --format jepsen <history.jsonl> [-o out.edn] [--vector]

Jepsen's history is a sequence of op maps ``{:index 0, :time 0, :type :invoke, :process 0,
:f :enqueue, :value "p-1"}``. The file holds one map per line (the shape Jepsen stores as
``history.edn``), or one EDN vector of them with ``--vector``. The mapping:

* ``:index`` counts 0, 1, 2, ... in history order (renumbered: one of our ops can become
  several); ``:time`` is nanoseconds since the first op; ``:type`` is ``:invoke``, ``:ok``,
  ``:fail`` or ``:info``; ``:error`` and ``:node`` are kept as they are.
* ``:process``: the nemesis is ``:nemesis``, and every nemesis op is ``:info`` (Jepsen logs
  both halves of a fault that way). Client processes are integers: ours that are integers
  keep their number, named ones (``"p0"``, ``"c1-ack"``) get the next free integers, and the
  name is kept in ``:hstream {:process "p0"}``. Jepsen allows one op in flight per process
  and never reuses a process after an ``:info`` completion (it may still be running): a
  batching producer's concurrent appends and a process's ops after an indeterminate one
  get further integers, so the pairs read back exactly as `harness.history.pair_completions`
  paired them. A completion without an invocation has no place in Jepsen's history and is
  left out (`Export.left_out` counts them; the command says so).
* **Queue ops**, named as Jepsen's ``queue`` and ``total-queue`` checkers (and
  ``expand-queue-drain-ops``) expect them:

  - ``append`` → ``:enqueue``, ``:value`` the record's payload id on every half (the
    invocation's value is the attempt, the ``:ok`` value the acknowledged element);
  - every record a subscription delivered (a ``fetch`` completion, or records in a
    ``drain`` completion) → one ``:dequeue`` whose ``:ok`` value is that record's payload
    id, so Jepsen counts delivered elements, redeliveries as its duplicates, and an
    acknowledged append never delivered as lost. A fetch's invocation is the first
    dequeue's invocation; its other records become invoke/ok pairs at the completion's
    time (as Jepsen expands a drain). A fetch that delivered nothing is a ``:dequeue``
    ``:fail`` (``:error :empty``) when it completed ok, else of the fetch's own type;
  - ``drain`` (our end-of-consumption barrier: producers done, consumers caught up) →
    ``:await-drain``. It is deliberately not Jepsen's ``:drain``: that op's value must be
    the elements it removed, and ``total-queue`` refuses an indeterminate one.

  Plain ``read`` ops read a log without consuming it, so they are no dequeues: they become
  ``:read`` with ``:value`` the vector of payload ids read, in order (queue checkers ignore
  them; Jepsen's set checkers read ``:read`` values the same way).
* Every other op (``view``, ``subscribe``, ``ack``, ``consume``, nemesis faults) keeps its
  ``f`` as a keyword and its value converted whole.
* What the Jepsen shape has no key for stays under ``:hstream``: the rest of the append's
  or read's value (``:stream``, ``:key``, ``:shard``, ``:record-id``, ``:final``, ...), a
  delivered record's own fields (``:record-id``, ``:consumer``, ...), the op's ``extra``.

Values become EDN: strings, integers, floats, ``true``/``false``/``nil``, lists and tuples as
vectors, sets as sets, and maps whose keys are keywords when they read as identifiers
(``"payload_id"`` → ``:payload-id``, Clojure's kebab case) and stay strings or integers
otherwise (a view ``{"1" "alive"}``). Payload ids stay what they are (a string stays a
string), so an element compares equal across its enqueue and its dequeue.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from harness.history import History, Op, as_ops, pair_completions

FORMATS = ("jepsen",)
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_KEYWORD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.*+!?-]*\Z")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


# -- EDN ---------------------------------------------------------------------------------------


class Keyword(str):
    """An EDN keyword; the string is its name without the colon."""

    __slots__ = ()


INDEX, TIME, TYPE, PROCESS, F, VALUE, NODE, ERROR, HSTREAM = map(
    Keyword, ("index", "time", "type", "process", "f", "value", "node", "error", "hstream")
)
NEMESIS = Keyword("nemesis")
EMPTY = Keyword("empty")


@lru_cache(maxsize=4096)
def key_edn(key: str) -> str:
    """A map key: a keyword when it reads as an identifier (kebab-cased), else a string."""
    if _IDENTIFIER.match(key):
        return ":" + key.replace("_", "-")
    return _string(key)


def _string(s: str) -> str:
    if _NEEDS_ESCAPE.search(s):
        s = _NEEDS_ESCAPE.sub(
            lambda m: _ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), s
        )
    return f'"{s}"'


def edn(value: Any) -> str:
    """`value` written as EDN (see the module docstring for what becomes what)."""
    t = type(value)
    if t is str:
        return _string(value)
    if t is Keyword:
        return ":" + value
    if value is None:
        return "nil"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        if math.isnan(value):
            return "##NaN"
        if math.isinf(value):
            return "##Inf" if value > 0 else "##-Inf"
        return repr(value)
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            kt = type(k)
            if kt is Keyword:
                ks = ":" + k
            elif kt is str:
                ks = key_edn(k)
            else:
                ks = edn(k)
            parts.append(f"{ks} {edn(v)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list | tuple):
        return "[" + " ".join(edn(x) for x in value) + "]"
    if isinstance(value, set | frozenset):
        return "#{" + " ".join(sorted(edn(x) for x in value)) + "}"
    if isinstance(value, bytes):
        return _string(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, int):  # an int subclass, e.g. an IntEnum
        return str(int(value))
    if isinstance(value, float):
        return edn(float(value))
    return _string(str(value))


# -- the mapping -------------------------------------------------------------------------------


@dataclass
class Export:
    """Jepsen op maps (plain dicts with Keyword values where EDN needs keywords)."""

    ops: list[dict[Any, Any]] = field(default_factory=list)
    left_out: int = 0  # completions without an invocation


def _kw(name: str) -> Keyword | str:
    """An op's f as a keyword (kebab-cased); a name no keyword can spell stays a string."""
    if _KEYWORD_NAME.match(name):
        return Keyword(name.replace("_", "-"))
    return name


def _payload_ids(records: Any) -> list[Any]:
    return [r.get("payload_id") if isinstance(r, dict) else None for r in records or ()]


class _Processes:
    """Jepsen process numbers: one op in flight each, never reused after an `info`."""

    def __init__(self, ops: list[Op]) -> None:
        self._taken = {op.process for op in ops if type(op.process) is int}
        self._next = 0
        self._free: dict[Any, list[int]] = {}
        self._first: dict[Any, int] = {}

    def _fresh(self) -> int:
        while self._next in self._taken:
            self._next += 1
        self._taken.add(self._next)
        return self._next

    def borrow(self, process: Any) -> int:
        free = self._free.get(process)
        if free:
            return free.pop()
        if process not in self._first:
            # An integer process keeps its own number for its first op in flight.
            n = process if type(process) is int else self._fresh()
            self._first[process] = n
            return n
        return self._fresh()

    def give_back(self, process: Any, n: int) -> None:
        self._free.setdefault(process, []).append(n)


def to_jepsen(history: History | str | Path | Iterable[Op | Mapping[str, Any]]) -> Export:
    """Our ops as Jepsen op maps; see the module docstring for the mapping."""
    ops = as_ops(history)
    if not ops:
        return Export()
    return _Exporter(ops).run()


class _Exporter:
    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.start = ops[0].time
        self.out = Export()
        self.procs = _Processes(ops)

    def run(self) -> Export:
        pairs = pair_completions(self.ops)
        jp_of: dict[int, int] = {}  # invocation index -> its Jepsen process
        for op in self.ops:
            v = op.value
            d = v if isinstance(v, dict) else {}
            if op.process == "nemesis":
                self.emit(op, NEMESIS, "info", op.f, v)
                continue
            if op.type == "invoke":
                jp = self.procs.borrow(op.process)
                jp_of[op.index] = jp
            else:
                inv = pairs.get(op.index)
                if inv is None:
                    self.out.left_out += 1
                    continue
                jp = jp_of.pop(inv.index)
                if op.type != "info":
                    self.procs.give_back(op.process, jp)
            f = op.f
            if f == "append":
                pid = d.get("payload_id")
                self.emit(op, jp, op.type, "enqueue", pid, _without(d, "payload_id"))
            elif f == "fetch":
                self.fetch(op, jp, d)
            elif f == "read":
                if op.type == "invoke":
                    self.emit(op, jp, "invoke", "read", None, d)
                else:
                    ids = _payload_ids(d.get("records"))
                    self.emit(op, jp, op.type, "read", ids, _without(d, "records"))
            elif f == "drain":
                self.drain(op, jp, v, d)
            else:
                self.emit(op, jp, op.type, f, v)
        return self.out

    def emit(
        self,
        op: Op,
        jp: int | Keyword,
        type_: str,
        f: str,
        value: Any,
        hstream: Mapping[str, Any] | None = None,
        error: Any = None,
    ) -> None:
        m: dict[Any, Any] = {
            INDEX: len(self.out.ops),
            TIME: op.time - self.start,
            TYPE: Keyword(type_),
            PROCESS: jp,
            F: _kw(f),
            VALUE: value,
        }
        if op.node is not None:
            m[NODE] = op.node
        if error is not None or op.error is not None:
            m[ERROR] = op.error if error is None else error
        kept: dict[str, Any] = {}
        if op.process != jp and jp is not NEMESIS:
            kept["process"] = op.process
        if hstream:
            kept.update(hstream)
        if op.extra:
            kept["extra"] = op.extra
        if kept:
            m[HSTREAM] = kept
        self.out.ops.append(m)

    def fetch(self, op: Op, jp: int, d: dict[str, Any]) -> None:
        if op.type == "invoke":
            self.emit(op, jp, "invoke", "dequeue", None, d)
            return
        records = d.get("records")
        if not records:
            if op.type == "ok":
                self.emit(op, jp, "fail", "dequeue", None, _without(d, "records"), EMPTY)
            else:
                self.emit(op, jp, op.type, "dequeue", None, _without(d, "records"))
            return
        # What was delivered was delivered, whatever the completion says of the stream after.
        for i, rec in enumerate(records):
            if i:
                self.emit(op, jp, "invoke", "dequeue", None)
            self.dequeued(op, jp, rec, d)

    def drain(self, op: Op, jp: int, v: Any, d: dict[str, Any]) -> None:
        self.emit(op, jp, op.type, "await-drain", _without(d, "records") if d else v)
        records = d.get("records")
        if op.type == "invoke" or not records:
            return
        # Delivered while the drain waited: dequeues of their own, after it.
        djp = self.procs.borrow(op.process)
        for rec in records:
            self.emit(op, djp, "invoke", "dequeue", None)
            self.dequeued(op, djp, rec, d)
        self.procs.give_back(op.process, djp)

    def dequeued(self, op: Op, jp: int, rec: Any, d: dict[str, Any]) -> None:
        if not isinstance(rec, dict):
            self.emit(op, jp, "ok", "dequeue", None, {"record": rec})
            return
        around: dict[str, Any] = {k: d[k] for k in ("subscription", "stream") if k in d}
        around.update(_without(rec, "payload_id"))
        self.emit(op, jp, "ok", "dequeue", rec.get("payload_id"), around)


def _without(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: x for k, x in d.items() if k != key}


# -- writing -----------------------------------------------------------------------------------


def write_edn(ops: Iterable[Mapping[Any, Any]], out: IO[str], *, vector: bool = False) -> int:
    """Write op maps one per line (inside `[` `]` with `vector`); returns how many."""
    n = 0
    if vector:
        out.write("[")
    for n, m in enumerate(ops, 1):
        if vector and n > 1:
            out.write("\n ")
        out.write(edn(m))
        if not vector:
            out.write("\n")
    if vector:
        out.write("]\n")
    return n


# -- the command -------------------------------------------------------------------------------

HELP = "write a saved history in another tool's format (jepsen: EDN op maps)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("history", type=Path, help="a history written by harness.history")
    parser.add_argument(
        "--format", choices=FORMATS, default="jepsen",
        help="jepsen: EDN op maps, queue ops as :enqueue/:dequeue (default)",
    )
    parser.add_argument(
        "-o", "--output", metavar="PATH", default="-",
        help="where to write (default '-': standard output)",
    )
    parser.add_argument(
        "--vector", action="store_true",
        help="one EDN vector of ops instead of one op map per line",
    )


def run(args: argparse.Namespace) -> int:
    from harness.history import load_ops

    exported = to_jepsen(load_ops(args.history))
    if args.output == "-":
        n = write_edn(exported.ops, sys.stdout, vector=args.vector)
    else:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            n = write_edn(exported.ops, fh, vector=args.vector)
        print(f"wrote {n} Jepsen ops from {args.history} to {path}", file=sys.stderr)
    if exported.left_out:
        print(
            f"left out {exported.left_out} completion(s) of {args.history} without an "
            "invocation: Jepsen's history has no place for them",
            file=sys.stderr,
        )
    return 0
