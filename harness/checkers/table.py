"""A history's ops grouped by `f`, and its appends as integer columns, shared by checkers.

Three in four ops of a long history are appends, and every checker but membership wants
the same few fields of each: its type, process, payload id, time and record id. What a
checker pays for a million ops is mostly touching scattered objects and probing big hash
tables, once per checker; `table_of(ops)` touches each op once: the positions of the ops
of each `f` (a checker walks only the ops it judges) and the appends as numpy columns of
small integers (payload ids as the shared dense ids of harness.checkers.columns), which
each checker judges in bulk; and, on first need, every record of the reads, fetches and
drains concatenated (`Reads`: dense payload ids and record id rows), so that the checkers
judge a clean history's reads in a few numpy passes and go record by record only where
it is not clean. There is a table only inside `shared_columns()` (what
`check_all` opens around its checkers), where it is built once and kept for every checker
given the same ops: a checker run alone walks its ops as before, since building the table
costs one checker more than its own walk saves. The verdicts are the same either way
(tests/checkers/test_fast_paths.py). The columns are read-only.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import chain, compress, count
from operator import attrgetter, is_, ne
from typing import Any, cast

import numpy as np

from harness.checkers.columns import (
    Columns,
    PayloadIds,
    columns_of,
    fast_paths,
    kept,
    payload_ids,
)
from harness.checkers.extract import compiled
from harness.history import READ_FS, Op

_KIND = "history-table"
INVOKE, OK, FAIL, INFO = range(4)  # append type codes (INFO: any other completion)
_TYPES = {"invoke": INVOKE, "ok": OK, "fail": FAIL}
_SEQUENCES = (list, tuple)
_STRETCH = 64  # records compared at once where a read's record ids differ from the appends'
_RECORDS = attrgetter("records")


class Appends:
    """The append ops of a history, in history order, as columns of equal length:
    `positions` in the ops list, `types` (INVOKE, OK, FAIL, INFO), `pids` (dense ids in
    `registry`), `processes` (dense ids; `process_names` names them), `times`, `indexes`
    (op.index). For the acknowledged ones (`types == OK`), in that order: `rids`, the
    record ids as the history spelt them, and `rid_array` (shard, batch, index) when every
    one is three ints that fit in 64 bits (else None). For the invocations, in that order:
    `invoke_keys`, each one's `value.get("key")` (the order checker's producer keys)."""

    __slots__ = (
        "ops", "registry", "positions", "types", "pids", "processes", "process_names",
        "times", "indexes", "rids", "rid_array", "invoke_keys", "_pairing",
    )

    def __init__(self, ops: list[Op], positions: list[int], registry: PayloadIds) -> None:
        self.ops = ops
        self.registry = registry
        self.positions = np.array(positions, dtype=np.int64)
        self._pairing: Pairing | None | bool = False
        fast = compiled()
        if fast is not None:
            # the loop below, compiled (harness/checkers/_extract.c)
            got = fast.append_columns(ops, positions, registry.index, registry.pids, _TYPES)
            self.types = np.frombuffer(got[0], dtype=np.int8)
            self.pids, self.processes = (np.frombuffer(c, dtype=np.int64) for c in got[1:3])
            self.process_names = got[3]
            self.times, self.indexes = (np.frombuffer(c, dtype=np.int64) for c in got[4:6])
            self.rids = got[6]
            self.rid_array = (np.frombuffer(got[7], dtype=np.int64).reshape(-1, 3)
                              if got[7] is not None else None)
            self.invoke_keys = got[8]
            return
        index, known = registry.index, registry.pids
        processes: dict[Any, int] = {}
        types: list[int] = []
        pids: list[int] = []
        process_ids: list[int] = []
        times: list[int] = []
        indexes: list[int] = []
        rids: list[Any] = []
        keys: list[Any] = []
        type_of = _TYPES.get
        # A completion's payload id is nearly always its process's last invocation's: one
        # comparison of two strings just touched, not a probe of a table of a million.
        opened: dict[int, tuple[Any, int]] = {}
        flat: list[Any] | None = []  # the acknowledged record ids' parts, while all are 3
        for op in map(ops.__getitem__, positions):
            v = op.value
            if type(v) is not dict:
                raise TypeError("an append's value is no dict")
            pid = v["payload_id"]  # KeyError, TypeError: no columns (see HistoryTable)
            p = op.process
            q = processes.get(p)
            if q is None:
                q = processes[p] = len(processes)
            t = type_of(op.type, INFO)
            held = opened.get(q) if t != INVOKE else None
            if held is not None and type(pid) is str and type(held[0]) is str and held[0] == pid:
                k = held[1]
            else:
                found = index.get(pid)
                if found is None:
                    found = index[pid] = len(known)
                    known.append(pid)
                k = found
            if t == INVOKE:
                opened[q] = (pid, k)
                keys.append(v.get("key"))
            elif t == OK:
                rid: Any = v.get("record_id")
                rids.append(rid)
                if flat is not None:
                    if type(rid) in _SEQUENCES and len(rid) == 3:
                        flat.extend(rid)
                    else:
                        flat = None
            types.append(t)
            pids.append(k)
            process_ids.append(q)
            times.append(op.time)
            indexes.append(op.index)
        # numpy would truncate a float time and refuse a string with ValueError: such a
        # history takes the op-by-op paths, which judge (or name) what it holds.
        if not set(map(type, times)) <= {int} or not set(map(type, indexes)) <= {int}:
            raise TypeError("op times and indexes must be ints")
        self.types = np.array(types, dtype=np.int8)
        self.pids = np.array(pids, dtype=np.int64)
        self.processes = np.array(process_ids, dtype=np.int64)
        self.process_names = list(processes)
        try:
            self.times = np.array(times, dtype=np.int64)
            self.indexes = np.array(indexes, dtype=np.int64)
        except OverflowError:
            raise TypeError("op times and indexes must be ints of 64 bits") from None
        self.rids = rids
        self.rid_array = _flat_rows(flat) if flat is not None else None
        self.invoke_keys = keys

    def pairing(self) -> Pairing | None:
        """How invocations and completions pair, when each payload id is invoked once and
        completed at most once, after it, by the same process (the usual history, where
        every checker's own pairing gives the same); else None."""
        if self._pairing is False:
            self._pairing = _pair(self)
        return self._pairing if isinstance(self._pairing, Pairing) else None

    def values(self, which: np.ndarray) -> list[Any]:
        """The op values of the appends numbered `which`."""
        ops = self.ops
        return [ops[i].value for i in self.positions[which].tolist()]


class Pairing:
    """`invoked` and `completed`: the appends (numbered in history order) of each kind;
    `opened_at[id]`: the append that invoked payload id `id` (-1: none)."""

    __slots__ = ("invoked", "completed", "opened_at")

    def __init__(self, invoked: np.ndarray, completed: np.ndarray, opened_at: np.ndarray) -> None:
        self.invoked = invoked
        self.completed = completed
        self.opened_at = opened_at


def _pair(appends: Appends) -> Pairing | None:
    types, ids, processes = appends.types, appends.pids, appends.processes
    invoked = np.flatnonzero(types == INVOKE)
    completed = np.flatnonzero(types != INVOKE)
    if repeats(ids[invoked]) or repeats(ids[completed]):
        return None
    opened_at = np.full(len(appends.registry.pids), -1, dtype=np.int64)
    opened_at[ids[invoked]] = invoked
    opened = opened_at[ids[completed]]
    if np.any(opened < 0) or np.any(opened > completed):
        return None
    if np.any(processes[opened] != processes[completed]):
        return None
    return Pairing(invoked, completed, opened_at)


def repeats(ids: np.ndarray) -> bool:
    """Whether some dense id (a non-negative int) comes more than once."""
    return bool(len(ids)) and int(np.bincount(ids).max()) > 1


def first_seen(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number non-negative int codes 0, 1, ... in the order first seen: each element's
    number, and where each number was first seen."""
    n = len(codes)
    if not n:
        return codes, codes
    top = int(codes.max()) + 1
    if top <= 4 * n + 1024:  # a table indexed by code
        first = np.full(top, n, dtype=np.int64)
        np.minimum.at(first, codes, np.arange(n, dtype=np.int64))
        seen = np.flatnonzero(first < n)
        firsts = np.sort(first[seen])
        number = np.empty(top, dtype=np.int64)
        number[codes[firsts]] = np.arange(len(firsts), dtype=np.int64)
        return number[codes], firsts
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int64)
    return rank[inverse], np.sort(first)


def distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (np.unique without return_index takes a slower path)."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _flat_rows(flat: list[Any]) -> np.ndarray | None:
    """(shard, batch, index) rows of the parts of record ids that were each a list or tuple
    of three, when every part is an int that fits in an int64."""
    if not flat:
        return np.zeros((0, 3), dtype=np.int64)
    if set(map(type, flat)) != {int}:
        return None
    try:
        return np.frombuffer(array("q", flat), dtype=np.int64).reshape(-1, 3)
    except OverflowError:
        return None


class Reads:
    """The records of the read, fetch and drain completions whose records are a non-empty
    list of dicts, in history order, concatenated: `positions` of those ops in the ops
    list (`number` maps a position to its place there), `starts` (where each op's records
    begin; one more at the end), `columns` (each op's shared harness.checkers.columns),
    `ids` (the dense payload ids of `registry`, or None when one cannot be taken) and
    `rows` (shard, batch, index) when every record id is a list of three ints that fit in
    64 bits, or equals (==) its payload id's acknowledged record id, which is one (else
    None): what lets a checker judge a million records in a few passes of numpy instead
    of comparing scattered lists."""

    __slots__ = ("positions", "number", "starts", "columns", "ids", "rows")

    def __init__(self, ops: list[Op], positions: list[int], appends: Appends) -> None:
        registry = appends.registry
        at: list[int] = []
        columns: list[Columns] = []
        for i in positions:
            op = ops[i]
            v = op.value
            if op.type == "invoke" or type(v) is not dict:
                continue
            records = v.get("records")
            taken = columns_of(records) if records else None
            if taken is not None:
                at.append(i)
                columns.append(taken)
        self.positions = at
        self.number = dict(zip(at, range(len(at)), strict=True))
        self.columns = columns
        lengths = np.fromiter(map(len, map(_RECORDS, columns)), np.int64, len(columns))
        self.starts = np.zeros(len(columns) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        ids = [c.id_array(registry) for c in columns]
        self.ids: np.ndarray | None = None
        if not any(i is None for i in ids):
            self.ids = (np.concatenate(cast(list[np.ndarray], ids)) if ids
                        else np.zeros(0, dtype=np.int64))
        self.rows = _read_rows(columns, self.ids, self.starts, appends)


def _read_rows(columns: list[Columns], ids: np.ndarray | None, starts: np.ndarray,
               appends: Appends) -> np.ndarray | None:
    """Reads.rows. A record id read is nearly always its payload id's acknowledged record
    id, so the rows are taken from the appends' rows wherever the read's record ids equal
    theirs (one C-level comparison of two lists of lists), and converted int by int only
    for the records where it does not: what list_rows makes of them all, at a fraction of
    the cost (converting a million lists of ints is most of what building the table costs)."""
    ok_rows, ok_rids = appends.rid_array, appends.rids
    # (no acknowledged append: an empty set of types, so every record is converted)
    if ids is None or ok_rows is None or not int(starts[-1]) or set(map(type, ok_rids)) != {list}:
        return list_rows(list(chain.from_iterable(c.rids for c in columns)))
    # each payload id's acknowledged append (the last, if twice), -1: none
    oks = np.flatnonzero(appends.types == OK)
    ack_of = np.full(len(appends.registry.pids), -1, dtype=np.int64)
    ack_of[appends.pids[oks]] = np.arange(len(oks), dtype=np.int64)
    fast = compiled()
    if fast is not None:
        # what follows, in one compiled pass (harness/checkers/_extract.c)
        taken, odd = fast.read_rows([c.rids for c in columns], np.ascontiguousarray(ids),
                                    ack_of, ok_rids, np.ascontiguousarray(ok_rows))
        got = np.frombuffer(taken, dtype=np.int64).reshape(-1, 3)
        if odd:  # (record ids of other shapes: list_rows says whether they are rows)
            raws = list(chain.from_iterable(c.rids for c in columns))
            own = list_rows(list(map(raws.__getitem__, odd)))
            if own is None:
                return None
            got[odd] = own
        return got
    raws = list(chain.from_iterable(c.rids for c in columns))
    acked = ack_of[ids]
    spelt = np.fromiter(chain(ok_rids, (None,)), dtype=object, count=len(ok_rids) + 1)
    expected = spelt[acked].tolist()  # (-1 picks the None put last: no list equals it)
    rows = ok_rows[acked]
    if raws != expected:
        # the records that differ, found a stretch at a time: equal stretches are passed by
        # one C-level comparison each (a record-by-record `ne` cost five times as much)
        other: list[int] = []
        for a in range(0, len(raws), _STRETCH):
            mine, theirs = raws[a:a + _STRETCH], expected[a:a + _STRETCH]
            if mine != theirs:
                other.extend(compress(count(a), map(ne, mine, theirs)))
        own = list_rows(list(map(raws.__getitem__, other)))
        if own is None:
            return None
        rows[other] = own
    return rows


def list_rows(raws: list[Any]) -> np.ndarray | None:
    """(shard, batch, index) rows when every record id is a list of three ints that fit in
    an int64; array("q") takes only ints (not floats, not strings), unlike numpy."""
    if not raws:
        return np.zeros((0, 3), dtype=np.int64)
    fast = compiled()
    if fast is not None:  # the usual ids, lists of three exact ints, in one compiled pass
        taken = fast.int_rows(raws)
        if taken is not None:
            return np.frombuffer(taken, dtype=np.int64).reshape(-1, 3)
    if set(map(type, raws)) != {list} or set(map(len, raws)) != {3}:
        return None
    try:
        flat = array("q", chain.from_iterable(raws))
    except (TypeError, OverflowError):
        return None
    return np.frombuffer(flat, dtype=np.int64).reshape(-1, 3)


class AckRows:
    """The record ids that the ack invocations name (a non-empty list `record_ids`), in
    history order, concatenated as (shard, batch, index) `rows` when every one is a list
    of three ints that fit in 64 bits (else None): the subscription and queue checkers
    both judge every acknowledged record id, and converting them int by int is most of
    what that costs. `starts`: where each ack's begin (one more at the end)."""

    __slots__ = ("held", "number", "starts", "rows")

    def __init__(self, ops: list[Op], positions: list[int]) -> None:
        held: list[list[Any]] = []
        for i in positions:
            op = ops[i]
            v = op.value
            if op.type == "invoke" and type(v) is dict:
                raw = v.get("record_ids")
                if type(raw) is list and raw:
                    held.append(raw)
        self.held = held  # (kept, so that each list's id stays its own)
        self.number = {id(raw): k for k, raw in enumerate(held)}
        lengths = np.fromiter(map(len, held), np.int64, len(held))
        self.starts = np.zeros(len(held) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.rows = list_rows(list(chain.from_iterable(held)))

    def rows_of(self, raws: Iterable[Any]) -> np.ndarray | None:
        """The rows of `raws` (ack invocations' `record_ids` lists, each the very list the
        history holds; None or empty: no rows) concatenated; None where some is not one
        of this table's lists or the table has no rows."""
        if self.rows is None:
            return None
        number, held = self.number, self.held
        ks: list[int] = []
        for raw in raws:
            if not raw:
                continue
            k = number.get(id(raw))
            if k is None or held[k] is not raw:
                return None
            ks.append(k)
        at = np.array(ks, dtype=np.int64)
        begin = self.starts[at]
        lengths = self.starts[at + 1] - begin
        n = int(lengths.sum())
        return self.rows[np.repeat(begin - (np.cumsum(lengths) - lengths), lengths)
                         + np.arange(n, dtype=np.int64)]


def ack_rows(ops: list[Op], raws: list[Any]) -> np.ndarray | None:
    """What `list_rows` makes of the record ids of `raws` (ack `record_ids` lists; None or
    empty: none) concatenated, taken from the shared table's AckRows where it holds them
    (inside `shared_columns()`), else converted here."""
    table = table_of(ops)
    if table is not None:
        got = table.acks.rows_of(raws)
        if got is not None:
            return got
    return list_rows(list(chain.from_iterable(raw or () for raw in raws)))


class HistoryTable:
    """One pass over the ops: the positions of each `f`'s ops; the appends and the read
    records on demand."""

    __slots__ = ("ops", "by_f", "_merged", "_appends", "_reads", "_acks")

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        fast = compiled()
        by_f: dict[Any, list[int]]
        if fast is not None:
            by_f = fast.group_by_f(ops)  # the loop below, in C
        else:
            by_f = {}
            for i, op in enumerate(ops):
                f = op.f
                at = by_f.get(f)
                if at is None:
                    by_f[f] = [i]
                else:
                    at.append(i)
        self.by_f = by_f
        # fs -> their positions, merged: kept, since several checkers ask for the same
        self._merged: dict[frozenset[Any], list[int]] = {}
        self._appends: Appends | None | bool = False
        self._reads: Reads | None | bool = False
        self._acks: AckRows | None = None

    def positions(self, fs: Iterable[str]) -> list[int]:
        """Positions of the ops whose f is one of `fs`, in history order (read-only)."""
        wanted = frozenset(f for f in fs if f in self.by_f)
        got = self._merged.get(wanted)
        if got is None:
            found = [self.by_f[f] for f in wanted]
            if len(found) == 1:
                return found[0]
            # (sorted runs: timsort merges them)
            got = self._merged[wanted] = sorted(chain.from_iterable(found))
        return got

    def without(self, f: str) -> list[int]:
        """Positions of the ops whose f is not `f`, in history order."""
        return self.positions([g for g in self.by_f if g != f])

    @property
    def appends(self) -> Appends | None:
        """The appends as columns, or None when one of them has a value that is no dict
        or has no payload id, an unhashable payload id, or a time or index that is no int
        (the checkers' op-by-op paths say what is wrong with it)."""
        if self._appends is False:
            try:
                self._appends = Appends(self.ops, self.by_f.get("append", []), payload_ids())
            except (KeyError, TypeError):
                self._appends = None
        return self._appends if isinstance(self._appends, Appends) else None

    def appends_taken(self) -> Appends | None:
        """The appends as columns if a checker has already taken them, else None (taking
        them here would cost more than a checker that only glances at them saves)."""
        return self._appends if isinstance(self._appends, Appends) else None

    @property
    def reads(self) -> Reads | None:
        """The read, fetch and drain records as columns (see Reads), where the appends are
        columns too (their registry numbers the payload ids), else None."""
        if self._reads is False:
            appends = self.appends
            self._reads = None if appends is None else Reads(
                self.ops, self.positions(READ_FS), appends)
        return self._reads if isinstance(self._reads, Reads) else None


    @property
    def acks(self) -> AckRows:
        """The record ids the ack invocations name, as rows (see AckRows)."""
        if self._acks is None:
            self._acks = AckRows(self.ops, self.by_f.get("ack", []))
        return self._acks


def table_of(ops: list[Op]) -> HistoryTable | None:
    """The table of `ops`, kept for the same ops, inside `shared_columns()`; None outside
    it, when the fast paths are off (`record_by_record`), or when an op's f cannot key a
    dict."""
    memo = kept()
    if memo is None or not fast_paths():
        return None
    for held in memo.get(_KIND, ()):
        same = held.ops
        if same is ops or (len(same) == len(ops) and all(map(is_, same, ops))):
            return held  # type: ignore[no-any-return]
    try:
        table = HistoryTable(ops)
    except TypeError:  # an unhashable f
        return None
    memo.setdefault(_KIND, []).append(table)
    return table
