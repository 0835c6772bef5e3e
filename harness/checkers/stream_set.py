"""Stream set checker: did every acknowledged append come back, once, and only those?

Adds are appends (`f="append"`), identified by the `payload_id` the producer put inside the
payload; reads are every record in the completion of a read/fetch/drain op, whenever it
happened (see harness.history for the op shapes). Definitions:

* **lost**: acknowledged (`ok`) before the final read began, and never read. Needs a final
  read (`"final": true` or `f="drain"`, optionally scoped by `"stream"` and `"shard"`: a
  read of one shard judges only that shard's appends); without one the verdict
  is "unknown" and the unread acknowledged appends are counted as `never_read`. Appends
  acknowledged after the final read began and never read are only counted (`unread_late`):
  the final read may legitimately have missed them.
* **unexpected**: read, but no append with that payload id was ever attempted.
* **duplicated**: read more often than it was attempted (reported with its multiplicity); a
  failure only with `exactly_once=True` (subscriptions redeliver unacked records by design,
  and two readers of one stream read everything twice: give such histories to the checker
  per reader, or leave duplicates informational).
* **recovered**: an indeterminate (`info`) append that was read; not a failure.
* **failed_but_read**: an append that definitely failed (`fail`, never acknowledged by a
  retry) and was read anyway: the server said no and did it. Always a failure.
* **stale**: acknowledged, read at some point, but missing from a *complete* read
  (`"complete": true`, or `"final": true`; a `drain` only marks the end of consumption)
  that began after the acknowledgement. A failure only
  with `linearizable=True`; figures give the visibility latency (ack to the completion of
  the first read that contained it) for all appends and for the stale ones.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, filterfalse, islice, repeat
from operator import not_, truediv
from typing import Any

import numpy as np

from harness.checkers.columns import columns_of
from harness.checkers.result import (
    NS_PER_MS,
    Result,
    add_anomalies,
    add_anomaly,
    quantiles,
    without_gc,
)
from harness.checkers.table import FAIL, INFO, INVOKE, OK, table_of
from harness.history import READ_FS, History, Op, as_ops

NAME = "stream-set"
_SEQUENCES = (list, tuple)
_NO_IDS = np.zeros(0, dtype=np.int64)  # (read-only: shared by every read without records)
_NO_IDS.flags.writeable = False


@without_gc
def check(
    history: History | Iterable[Op],
    *,
    exactly_once: bool = False,
    linearizable: bool = False,
    read_fs: frozenset[str] = READ_FS,
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Judge the history's appends against its reads; see the module docstring.

    `select` keeps only the ops it returns True for (e.g. one stream's, one reader's).
    """
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = _check_by_id(ops, read_fs)
    if result is not None:
        return _verdict(result, exactly_once=exactly_once, linearizable=linearizable)
    fold = _Fold()
    fold.run(ops, read_fs)
    result = Result(valid=True, checker=NAME)
    latencies = _judge_reads(fold, result, ops[0].time if ops else 0)
    _judge_staleness(fold, result, latencies)
    return _verdict(result, exactly_once=exactly_once, linearizable=linearizable)


def _check_by_id(ops: list[Op], read_fs: frozenset[str]) -> Result | None:
    """The whole check over dense payload ids (harness.checkers.table and .columns, shared
    with the other checkers): the appends as integer columns, each read's payload ids as
    ids, and every count and set an array indexed by id. The same result as `_Fold` and
    the judges after it, or None where this path does not go: appends or records that
    are not dicts with hashable payload ids, or a complete read that may have missed an
    append it should have returned (the stale judge then wants the op-by-op fold)."""
    table = table_of(ops)
    appends = table.appends if table is not None else None
    if table is None or appends is None:
        return None
    registry = appends.registry
    types, ids = appends.types, appends.pids
    oks = np.flatnonzero(types == OK)
    ok_ids = ids[oks]
    first_ok = np.full(len(registry.pids), len(oks), dtype=np.int64)
    np.minimum.at(first_ok, ok_ids, np.arange(len(oks), dtype=np.int64))
    firsts = oks[np.sort(first_ok[first_ok < len(oks)])]  # each id's first ack, in order
    ack_ids, ack_times = ids[firsts], appends.times[firsts]
    ack_positions = appends.positions[firsts].tolist()

    # -- the reads, in history order
    read_began: dict[tuple[Any, str], int] = {}
    final_began: dict[tuple[Any, Any], int] = {}
    complete_reads: dict[tuple[Any, Any], list[int]] = {}
    complete: list[tuple[int, np.ndarray, int]] = []  # (began, payload ids, acks before)
    chunks: list[np.ndarray] = []
    chunk_times: list[int] = []
    positions = table.positions(read_fs)
    for i, op in zip(positions, map(ops.__getitem__, positions), strict=True):
        key = (op.process, op.f)
        if op.type == "invoke":
            read_began[key] = op.time
            continue
        began = read_began.pop(key, op.time)
        v = op.value
        if not isinstance(v, dict):
            continue
        records = v.get("records")
        is_final = op.type == "ok" and (bool(v.get("final")) or op.f == "drain")
        is_complete = op.type == "ok" and bool(v.get("final") or v.get("complete"))
        scope = (v.get("stream"), v.get("shard"))
        if is_final:
            final_began[scope] = max(final_began.get(scope, began), began)
        if is_complete:
            complete_reads.setdefault(scope, []).append(began)
        got = _NO_IDS
        if records:
            columns = columns_of(records)
            taken = columns.id_array(registry) if columns is not None else None
            if taken is None:
                return None
            got = taken
            chunks.append(got)
            chunk_times.append(op.time)
        if is_complete:
            complete.append((began, got, bisect_left(ack_positions, i)))

    # -- per payload id: attempts, acks, failures, reads
    size = len(registry.pids)
    attempts = np.bincount(ids[types == INVOKE], minlength=size)
    acked = np.zeros(size, dtype=bool)
    acked[ack_ids] = True
    acked_at = np.zeros(size, dtype=np.int64)
    acked_at[ack_ids] = ack_times
    failed = np.zeros(size, dtype=bool)
    failed[ids[types == FAIL]] = True
    indeterminate = np.zeros(size, dtype=bool)
    indeterminate[ids[types == INFO]] = True
    read_ids = np.concatenate(chunks) if chunks else _NO_IDS
    reads = np.bincount(read_ids, minlength=size)
    first_at = np.full(size, len(read_ids), dtype=np.int64)
    np.minimum.at(first_at, read_ids, np.arange(len(read_ids), dtype=np.int64))
    found = np.flatnonzero(first_at < len(read_ids))
    first = first_at[found]
    null = registry.index.get(None)  # a record without a payload id
    malformed = 0
    if null is not None and reads[null]:
        malformed = int(reads[null])
        reads[null] = 0
        found, first = found[found != null], first[found != null]
    by_first = np.argsort(first, kind="stable")
    read_order, first = found[by_first], first[by_first]  # in the order first read
    ends = np.cumsum(np.fromiter(map(len, chunks), np.int64, len(chunks)))
    first_read_at = np.array(chunk_times, dtype=np.int64)[
        np.searchsorted(ends, first, side="right")] if len(first) else first

    # -- stale: complete reads begun after an ack that did not return it (the op-by-op
    # judge counts and describes them; here only whether there may be any)
    if complete_reads and fold_acks_in_time_order(ack_times):
        suspects = np.zeros(len(ack_ids), dtype=bool)
        for began, got_ids, acks_before in complete:
            acked_before = int(np.searchsorted(ack_times, began, side="left"))
            early = min(acked_before, acks_before)
            returned = np.zeros(size, dtype=bool)
            returned[got_ids] = True
            suspects[:early] |= ~returned[ack_ids[:early]]
            suspects[acks_before:acked_before] = True
        if np.any(suspects & (reads[ack_ids] > 0)):
            return None
    elif complete_reads:
        return None

    result = Result(valid=True, checker=NAME)
    counts = result.counts
    counts.update(
        attempted=int(np.count_nonzero(attempts)),
        acknowledged=len(ack_ids),
        failed=int(np.count_nonzero(failed)),
        indeterminate=int(np.count_nonzero(indeterminate)),
        read=len(read_order),
        read_ops=len(chunks),
        complete_reads=sum(len(x) for x in complete_reads.values()),
        final_reads=len(final_began),
    )
    if malformed:
        counts["malformed"] = malformed
        result.notes.append(f"{malformed} append ops or read records had no payload_id")

    pid_of = registry.pids.__getitem__
    was_acked, written = acked[read_order], attempts[read_order]
    not_acked = ~was_acked
    latencies = (first_read_at - acked_at[read_order])[was_acked]
    found_kinds = {
        "duplicated": (written > 0) & (reads[read_order] > written),
        "recovered": indeterminate[read_order] & not_acked,
        "failed_but_read": ~indeterminate[read_order] & failed[read_order] & not_acked,
    }
    unexpected = read_order[(written == 0) & not_acked].tolist()
    add_anomalies(result, "unexpected", unexpected,
                  lambda k: {"payload_id": pid_of(k), "reads": int(reads[k])})
    unread_kinds: Counter[str] = Counter()
    unread = np.flatnonzero(reads[ack_ids] == 0)
    if len(unread):
        start = ops[0].time if ops else 0
        values = appends.values(firsts[unread])
        for k, val in zip(unread.tolist(), values, strict=True):
            unread_kinds[_judge_unread(result, pid_of(int(ack_ids[k])), val,
                                       int(ack_times[k]), final_began, start)] += 1
    counts["never_read"] = unread_kinds["never_read"]
    counts["unread_late"] = unread_kinds["unread_late"]
    described: dict[str, Callable[[int], Any]] = {
        "duplicated": lambda k: {"payload_id": pid_of(k), "reads": int(reads[k]),
                                 "attempts": int(attempts[k])},
        "recovered": lambda k: {"payload_id": pid_of(k)},
        "failed_but_read": lambda k: {"payload_id": pid_of(k), "reads": int(reads[k])},
    }
    # in the order their first example comes in the order payload ids were first read
    firsts_of = {kind: int(np.argmax(mask)) for kind, mask in found_kinds.items() if mask.any()}
    for kind in sorted(firsts_of, key=firsts_of.__getitem__):
        add_anomalies(result, kind, read_order[found_kinds[kind]].tolist(), described[kind])

    # (int64 nanoseconds below 2**53 become float64 exactly, so each division gives the
    # float that max(0, ns) / NS_PER_MS gives in Python)
    result.figures["visibility_latency_ms"] = quantiles(
        (np.maximum(latencies, 0) / NS_PER_MS).tolist()
        if not len(latencies) or int(latencies.max()) < 1 << 53 else
        list(map(truediv, map(max, repeat(0), latencies.tolist()), repeat(NS_PER_MS)))
    )
    result.figures["stale_latency_ms"] = quantiles([])
    return result


def fold_acks_in_time_order(ack_times: np.ndarray) -> bool:
    """Whether the first acks were recorded in time order (as `_Fold` tells)."""
    return bool(np.all(ack_times[1:] >= ack_times[:-1]))


class _Fold:
    """One pass over the history: appends by payload id, read counts, complete reads."""

    def __init__(self) -> None:
        self.attempts: dict[Any, int] = {}
        # payload id -> ack time, in the order the acks were recorded; the same as columns,
        # with the acknowledged append's value
        self.acked_at: dict[Any, int] = {}
        self.ack_pids: list[Any] = []
        self.ack_times: list[int] = []
        self.ack_values: list[dict[str, Any]] = []
        self.acks_in_time_order = True
        self.failed: set[Any] = set()
        self.indeterminate: set[Any] = set()
        # payload id -> times read, in the order first read; and (ids read so far, op time)
        # after each read that added some: what gives each id the time it was first read
        self.read_count: Counter[Any] = Counter()
        self.first_reads: list[tuple[int, int]] = []
        # complete / final reads: (scope, invoke time, their records or payload ids, acks
        # recorded before their completion)
        self.complete: list[tuple[tuple[Any, Any], int, _Read, int]] = []
        # (stream, shard) read (None: all of them) -> invoke times of complete / final reads
        self.complete_reads: dict[tuple[Any, Any], list[int]] = {}
        self.final_began: dict[tuple[Any, Any], int] = {}
        self.malformed = 0
        self.n_reads = 0

    def run(self, ops: list[Op], read_fs: frozenset[str]) -> None:
        attempts, acked_at = self.attempts, self.acked_at
        ack_pids, ack_times, ack_values = self.ack_pids, self.ack_times, self.ack_values
        last_ack = None
        read_began: dict[tuple[Any, str], int] = {}
        for op in ops:
            f = op.f
            v = op.value
            if f == "append":
                if not isinstance(v, dict) or "payload_id" not in v:
                    self.malformed += 1
                    continue
                pid = v["payload_id"]
                t = op.type
                if t == "invoke":
                    attempts[pid] = attempts.get(pid, 0) + 1
                elif t == "ok":
                    if pid not in acked_at:
                        now = op.time
                        acked_at[pid] = now
                        ack_pids.append(pid)
                        ack_times.append(now)
                        ack_values.append(v)
                        if last_ack is not None and now < last_ack:
                            self.acks_in_time_order = False
                        last_ack = now
                elif t == "fail":
                    self.failed.add(pid)
                else:
                    self.indeterminate.add(pid)
            elif f in read_fs:
                key = (op.process, f)
                if op.type == "invoke":
                    read_began[key] = op.time
                    continue
                began = read_began.pop(key, op.time)
                if isinstance(v, dict):
                    self.read(op, v, began)

    def read(self, op: Op, v: dict[str, Any], began: int) -> None:
        records = v.get("records")
        is_final = op.type == "ok" and (bool(v.get("final")) or op.f == "drain")
        # A drain ends the run but, unlike a final read, need not return everything.
        is_complete = op.type == "ok" and bool(v.get("final") or v.get("complete"))
        scope = (v.get("stream"), v.get("shard"))
        if is_final:
            self.final_began[scope] = max(self.final_began.get(scope, began), began)
        if is_complete:
            self.complete_reads.setdefault(scope, []).append(began)
        if not records:
            if is_complete:
                self.complete.append((scope, began, _Read([]), len(self.acked_at)))
            return
        self.n_reads += 1
        read_count = self.read_count
        known = len(read_count)
        columns = columns_of(records)
        if columns is not None:
            # One pass in C over the read's payload ids (shared with the other checkers); a
            # missing or null payload id is counted under None, then taken back out as
            # malformed.
            pids = columns.pids
            read_count.update(pids)
            self.malformed += read_count.pop(None, 0)
            read = _Read(pids)
        else:
            pids = []
            for rec in records:
                pid = rec.get("payload_id") if type(rec) is dict else None
                if pid is None:
                    self.malformed += 1
                else:
                    read_count[pid] += 1
                    pids.append(pid)
            read = _Read(pids)
        if len(read_count) > known:
            self.first_reads.append((len(read_count), op.time))
        if is_complete:
            # Only acks recorded before this completion can count as seen by it: an ack
            # recorded later happened after the read began.
            self.complete.append((scope, began, read, len(self.acked_at)))

    def first_read_times(self) -> list[int]:
        """The completion time of the first read of each payload id, in read_count order."""
        times: list[int] = []
        known = 0
        for n, t in self.first_reads:
            times.extend(repeat(t, n - known))
            known = n
        return times


class _Read:
    """The payload ids of a complete read: its records (all dicts), or the ids themselves."""

    __slots__ = ("items", "records")

    def __init__(self, items: list[Any], *, records: bool = False) -> None:
        self.items = items
        self.records = records

    def __iter__(self) -> Iterator[Any]:
        if self.records:
            return map(dict.get, self.items, repeat("payload_id"))
        return iter(self.items)


def _judge_reads(fold: _Fold, result: Result, start: int) -> list[int]:
    """Unexpected, lost, duplicated, recovered, failed-but-read; returns the visibility
    latencies (ns) of the read acknowledged appends, from the same walk."""
    counts = result.counts
    counts.update(
        attempted=len(fold.attempts),
        acknowledged=len(fold.acked_at),
        failed=len(fold.failed),
        indeterminate=len(fold.indeterminate),
        read=len(fold.read_count),
        read_ops=fold.n_reads,
        complete_reads=sum(len(x) for x in fold.complete_reads.values()),
        final_reads=len(fold.final_began),
    )
    if fold.malformed:
        counts["malformed"] = fold.malformed
        result.notes.append(f"{fold.malformed} append ops or read records had no payload_id")

    attempts, acked_at, read_count = fold.attempts, fold.acked_at, fold.read_count
    indeterminate, failed = fold.indeterminate, fold.failed
    attempts_get, acked_get = attempts.get, acked_at.get
    unexpected: list[Any] = []
    duplicated: list[Any] = []
    recovered: list[Any] = []
    failed_but_read: list[Any] = []
    kinds: list[str] = []  # in the order their first example comes in the walk
    latencies: list[int] = []
    # One walk over the read payload ids, in the order they were first read.
    for pid, n, first in zip(read_count, read_count.values(), fold.first_read_times(),
                             strict=True):
        acked = acked_get(pid)
        written = attempts_get(pid)
        if acked is not None:
            latencies.append(first - acked)
        if written is None:
            if acked is None:
                unexpected.append(pid)
        elif n > written:
            if not duplicated:
                kinds.append("duplicated")
            duplicated.append(pid)
        if pid in indeterminate:
            if acked is None:
                if not recovered:
                    kinds.append("recovered")
                recovered.append(pid)
        elif pid in failed and acked is None:
            if not failed_but_read:
                kinds.append("failed_but_read")
            failed_but_read.append(pid)

    add_anomalies(
        result, "unexpected", unexpected, lambda pid: {"payload_id": pid, "reads": read_count[pid]}
    )
    unread_kinds: Counter[str] = Counter()
    if len(latencies) < len(acked_at):
        final_began = fold.final_began
        ack_pids, ack_values = fold.ack_pids, fold.ack_values
        unread = map(not_, map(read_count.__contains__, ack_pids))
        for i in compress(range(len(ack_pids)), unread):
            pid = ack_pids[i]
            unread_kinds[_judge_unread(result, pid, ack_values[i], acked_at[pid],
                                       final_began, start)] += 1
    counts["never_read"] = unread_kinds["never_read"]
    counts["unread_late"] = unread_kinds["unread_late"]

    described: dict[str, tuple[list[Any], Callable[[Any], Any]]] = {
        "duplicated": (
            duplicated,
            lambda pid: {"payload_id": pid, "reads": read_count[pid], "attempts": attempts[pid]},
        ),
        "recovered": (recovered, lambda pid: {"payload_id": pid}),
        "failed_but_read": (
            failed_but_read, lambda pid: {"payload_id": pid, "reads": read_count[pid]}
        ),
    }
    for kind in kinds:
        add_anomalies(result, kind, *described[kind])
    return latencies


def _judge_staleness(fold: _Fold, result: Result, latencies_ns: list[int]) -> None:
    """Stale: complete reads of the append's stream begun after its ack, minus those that
    had it; and the visibility latency of every append that was read."""
    latencies: list[float] = list(
        map(truediv, map(max, repeat(0), latencies_ns), repeat(NS_PER_MS))
    )
    stale_latencies: list[float] = []
    if fold.complete_reads:
        for times in fold.complete_reads.values():
            times.sort()
        candidates = _stale_candidates(fold)
        if candidates:
            missed_by = _missed(fold, candidates)
            first_read_at = dict(zip(fold.read_count, fold.first_read_times(), strict=True))
            acked_at = fold.acked_at
            for pid in candidates:
                missed = missed_by[pid]
                if missed > 0:
                    latency_ms = max(0, first_read_at[pid] - acked_at[pid]) / NS_PER_MS
                    stale_latencies.append(latency_ms)
                    add_anomaly(
                        result,
                        "stale",
                        {"payload_id": pid, "missed_by_reads": missed, "latency_ms": latency_ms},
                    )
    result.figures["visibility_latency_ms"] = quantiles(latencies)
    result.figures["stale_latency_ms"] = quantiles(stale_latencies)


def _stale_candidates(fold: _Fold) -> list[Any]:
    """Read payload ids, in ack order, that some complete read begun after their ack may
    have missed: it did not return them, or their ack was recorded only after it. Every
    other payload id was in every complete read that could count it, so none missed it."""
    pids, ack_times = fold.ack_pids, fold.ack_times
    suspects: set[Any] = set()
    for _scope, began, read, acks_before in fold.complete:
        if fold.acks_in_time_order:
            acked_before = bisect_left(ack_times, began)
            early: Iterable[Any] = islice(pids, min(acked_before, acks_before))
            late: Iterable[Any] = islice(pids, acks_before, acked_before)
        else:
            early = [p for p, t in zip(pids[:acks_before], ack_times, strict=False) if t < began]
            late = [p for p, t in zip(pids[acks_before:], ack_times[acks_before:], strict=True)
                    if t < began]
        suspects.update(filterfalse(set(read).__contains__, early))
        suspects.update(late)
    if not suspects:
        return []
    read_count = fold.read_count
    return [p for p in pids if p in suspects and p in read_count]


def _missed(fold: _Fold, candidates: list[Any]) -> dict[Any, int]:
    """Per payload id: complete reads of its scope begun after its ack, minus the times
    complete reads returned it (a hit needs the ack recorded before the read completed)."""
    acked_at = fold.acked_at
    wanted = set(candidates)
    position = {p: i for i, p in enumerate(fold.ack_pids) if p in wanted}
    missed: dict[Any, int] = {}
    for pid in candidates:
        acked = acked_at[pid]
        stream, shard = _stream_shard(fold.ack_values[position[pid]])
        after = 0
        for (s_stream, s_shard), began_times in fold.complete_reads.items():
            if (s_stream is None or s_stream == stream) and (s_shard is None or s_shard == shard):
                after += len(began_times) - bisect_right(began_times, acked)
        missed[pid] = after
    for _scope, began, read, acks_before in fold.complete:
        counted = [p for p in candidates if began > acked_at[p] and position[p] < acks_before]
        if counted:
            hits = Counter(filter(wanted.__contains__, read))
            for p in counted:
                missed[p] -= hits[p]
    return missed


def _verdict(result: Result, *, exactly_once: bool, linearizable: bool) -> Result:
    counts = result.counts
    for kind in ("lost", "unexpected", "duplicated", "recovered", "failed_but_read", "stale"):
        counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])

    failures = counts["lost"] + counts["unexpected"] + counts["failed_but_read"]
    if exactly_once:
        failures += counts["duplicated"]
    if linearizable:
        failures += counts["stale"]
    never_read = counts["never_read"]
    if failures:
        result.valid = False
    elif never_read:
        result.valid = "unknown"
        result.notes.append(
            f"{never_read} acknowledged appends were never read and there is no final read "
            "to call them lost: end the workload with a final read or drain"
        )
    return result


def _stream_shard(append: dict[str, Any]) -> tuple[Any, Any]:
    rid = append.get("record_id")
    shard = rid[0] if isinstance(rid, _SEQUENCES) and rid else append.get("shard")
    return append.get("stream"), shard


def _judge_unread(result: Result, pid: Any, value: dict[str, Any], acked: int,
                  final_began: dict[Any, int], start: int) -> str:
    """What an acknowledged append that no read returned is: "lost" (recorded as an anomaly)
    when a final read of its stream or shard began after its ack, "unread_late" when every
    such read began before the ack, "never_read" when no final read covers it."""
    cutoffs = [final_began[c] for c in _scopes(value) if c in final_began]
    if not cutoffs:
        return "never_read"
    if acked < max(cutoffs):
        add_anomaly(result, "lost", _describe(pid, value, acked, start))
        return "lost"
    return "unread_late"


def _scopes(append: dict[str, Any]) -> set[tuple[Any, Any]]:
    """The (stream, shard) scopes of reads that cover this append (None: any)."""
    stream, shard = _stream_shard(append)
    return {(stream, shard), (stream, None), (None, shard), (None, None)}


def _describe(pid: Any, value: dict[str, Any], acked: int, start: int) -> dict[str, Any]:
    return {
        "payload_id": pid,
        "stream": value.get("stream"),
        "key": value.get("key"),
        "record_id": value.get("record_id"),
        "acked_at_ms": round((acked - start) / NS_PER_MS, 3),
    }
