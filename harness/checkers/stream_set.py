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

from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any

from harness.checkers.result import NS_PER_MS, Result, add_anomaly, quantiles, without_gc
from harness.history import READ_FS, History, Op, as_ops

NAME = "stream-set"
_SEQUENCES = (list, tuple)


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

    attempts: dict[Any, int] = {}
    append_value: dict[Any, dict[str, Any]] = {}
    acked_at: dict[Any, int] = {}
    failed: set[Any] = set()
    indeterminate: set[Any] = set()
    read_count: dict[Any, int] = {}
    first_read_at: dict[Any, int] = {}
    # payload id -> number of complete reads of its stream, begun after its ack, that had it
    complete_hits: dict[Any, int] = {}
    # (stream, shard) read (None: all of them) -> invoke times of complete / final reads
    complete_reads: dict[tuple[Any, Any], list[int]] = {}
    final_began: dict[tuple[Any, Any], int] = {}
    read_began: dict[tuple[Any, str], int] = {}
    start = ops[0].time if ops else 0
    read_count_get = read_count.get
    acked_at_get = acked_at.get
    complete_hits_get = complete_hits.get
    malformed = 0
    n_reads = 0

    for op in ops:
        f = op.f
        v = op.value
        if f == "append":
            if not isinstance(v, dict) or "payload_id" not in v:
                malformed += 1
                continue
            pid = v["payload_id"]
            t = op.type
            if t == "invoke":
                attempts[pid] = attempts.get(pid, 0) + 1
                if pid not in append_value:
                    append_value[pid] = v
            elif t == "ok":
                if pid not in acked_at:
                    acked_at[pid] = op.time
                    append_value[pid] = v
            elif t == "fail":
                failed.add(pid)
            else:
                indeterminate.add(pid)
        elif f in read_fs:
            key = (op.process, f)
            if op.type == "invoke":
                read_began[key] = op.time
                continue
            began = read_began.pop(key, op.time)
            if not isinstance(v, dict):
                continue
            records = v.get("records")
            is_final = op.type == "ok" and (bool(v.get("final")) or f == "drain")
            # A drain ends the run but, unlike a final read, need not return everything.
            is_complete = op.type == "ok" and bool(v.get("final") or v.get("complete"))
            scope = (v.get("stream"), v.get("shard"))
            if is_final:
                final_began[scope] = max(final_began.get(scope, began), began)
            if is_complete:
                complete_reads.setdefault(scope, []).append(began)
            if not records:
                continue
            n_reads += 1
            now = op.time
            for rec in records:
                pid = rec.get("payload_id") if type(rec) is dict else None
                if pid is None:
                    malformed += 1
                    continue
                n = read_count_get(pid)
                if n is None:
                    read_count[pid] = 1
                    first_read_at[pid] = now
                else:
                    read_count[pid] = n + 1
                if is_complete:
                    # The ack precedes this completion in the history when it matters: an
                    # ack recorded later happened after the read began, so it cannot count.
                    acked = acked_at_get(pid)
                    if acked is not None and began > acked:
                        complete_hits[pid] = complete_hits_get(pid, 0) + 1

    result = Result(valid=True, checker=NAME)
    counts = result.counts
    counts.update(
        attempted=len(attempts),
        acknowledged=len(acked_at),
        failed=len(failed),
        indeterminate=len(indeterminate),
        read=len(read_count),
        read_ops=n_reads,
        complete_reads=sum(len(x) for x in complete_reads.values()),
        final_reads=len(final_began),
    )
    if malformed:
        counts["malformed"] = malformed
        result.notes.append(f"{malformed} append ops or read records had no payload_id")

    for pid in read_count:
        if pid not in attempts and pid not in acked_at:
            add_anomaly(result, "unexpected", {"payload_id": pid, "reads": read_count[pid]})

    never_read = 0
    unread_late = 0
    for pid, acked in acked_at.items():
        if pid in read_count:
            continue
        val = append_value.get(pid, {})
        cutoffs = [final_began[c] for c in _scopes(val) if c in final_began]
        cutoff = max(cutoffs) if cutoffs else None
        if cutoff is None:
            never_read += 1
        elif acked < cutoff:
            add_anomaly(result, "lost", _describe(pid, val, acked, start))
        else:
            unread_late += 1
    counts["never_read"] = never_read
    counts["unread_late"] = unread_late

    for pid, n in read_count.items():
        written = attempts.get(pid, 0)
        if written and n > written:
            add_anomaly(
                result, "duplicated", {"payload_id": pid, "reads": n, "attempts": written}
            )
        if pid in indeterminate and pid not in acked_at:
            add_anomaly(result, "recovered", {"payload_id": pid})
        elif pid in failed and pid not in acked_at and pid not in indeterminate:
            add_anomaly(result, "failed_but_read", {"payload_id": pid, "reads": n})

    # Stale: complete reads of the append's stream begun after its ack, minus those that had it.
    for times in complete_reads.values():
        times.sort()
    complete_scopes = list(complete_reads.items())
    latencies: list[float] = []
    stale_latencies: list[float] = []
    for pid, acked in acked_at.items():
        seen = first_read_at.get(pid)
        if seen is None:
            continue
        latency_ms = max(0, seen - acked) / NS_PER_MS
        latencies.append(latency_ms)
        if not complete_reads:
            continue
        stream, shard = _stream_shard(append_value.get(pid, {}))
        after = 0
        for (s_stream, s_shard), began_times in complete_scopes:
            if (s_stream is None or s_stream == stream) and (s_shard is None or s_shard == shard):
                after += len(began_times) - bisect_right(began_times, acked)
        missed = after - complete_hits.get(pid, 0)
        if missed > 0:
            stale_latencies.append(latency_ms)
            add_anomaly(
                result,
                "stale",
                {"payload_id": pid, "missed_by_reads": missed, "latency_ms": latency_ms},
            )

    result.figures["visibility_latency_ms"] = quantiles(latencies)
    result.figures["stale_latency_ms"] = quantiles(stale_latencies)
    for kind in ("lost", "unexpected", "duplicated", "recovered", "failed_but_read", "stale"):
        counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])

    failures = counts["lost"] + counts["unexpected"] + counts["failed_but_read"]
    if exactly_once:
        failures += counts["duplicated"]
    if linearizable:
        failures += counts["stale"]
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
