"""Order checker: per-shard read order, per-producer-and-key order, record id integrity.

A *reader sequence* is what one reader saw of one shard, in the order it saw it:

* for a subscription consumer or a shard reader: every record it received over the run,
  identified by the record's `consumer` (else the op's `consumer`, else the op's process);
* for a complete or final read (a fresh read of the stream from its start): that one op.

Checks (anomaly kinds):

* **shard_order**: within a reader sequence, the record ids `(batch, index)` of one shard
  seen for the first time must strictly increase. A record the same reader already saw is
  a *re-delivery* (subscriptions resend unacknowledged records after the ack timeout, a
  reassigned shard restarts from the checkpoint) and is skipped, not an order violation;
  what the server may not do is hand a reader a record it has never seen that sorts before
  one it has.
* **key_order**: for each producer (the append's process) and key, the acknowledged appends
  in the order the producer invoked them; within every reader sequence their first
  appearances must keep that order. Indeterminate appends are left out: a timed-out append
  can land after the producer's next one.
* **append_order**: on one shard, an append acknowledged before another was invoked must
  get a smaller batch id (the store's sequence numbers increase per shard).
* **record_id_conflict**: one record id carrying two different payloads, or a payload read
  back under another record id than its append was acknowledged with.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from harness.checkers.result import Result, add_anomaly
from harness.history import READ_FS, History, Op, as_ops

NAME = "order"


def _rid(raw: Any) -> tuple[int, int, int] | None:
    if isinstance(raw, list | tuple) and len(raw) == 3:
        try:
            return (int(raw[0]), int(raw[1]), int(raw[2]))
        except (TypeError, ValueError):
            return None
    return None


def check(
    history: History | Iterable[Op],
    *,
    read_fs: frozenset[str] = READ_FS,
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Judge read order and record identity; see the module docstring."""
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = Result(valid=True, checker=NAME)

    # producer order: payload id -> (producer, key, position in the producer's invocations)
    position: dict[Any, tuple[Any, Any, int]] = {}
    next_position: dict[tuple[Any, Any], int] = {}
    acked: set[Any] = set()
    # a payload appended more than once (a retry) may legitimately live under two record ids
    retried: set[Any] = set()
    open_append: dict[tuple[Any, Any], int] = {}
    # shard -> op indexes of append completions (increasing) and the running max batch id
    done_index: dict[int, list[int]] = {}
    done_max: dict[int, list[int]] = {}
    rid_payload: dict[tuple[int, int, int], Any] = {}
    payload_rid: dict[Any, tuple[int, int, int]] = {}
    # reader sequence -> last record id, and the ids it has seen
    last: dict[tuple[Any, int], tuple[int, int]] = {}
    seen: dict[tuple[Any, int], set[tuple[int, int]]] = {}
    # reader sequence (per reader, across shards) -> payload ids seen first, in order
    first_seen: dict[Any, list[Any]] = {}
    redeliveries = 0
    checked_records = 0

    for op in ops:
        f = op.f
        v = op.value
        if not isinstance(v, dict):
            continue
        if f == "append":
            pid = v.get("payload_id")
            if pid is None:
                continue
            if op.type == "invoke":
                pk = (op.process, v.get("key"))
                n = next_position.get(pk, 0)
                next_position[pk] = n + 1
                if pid in position:
                    retried.add(pid)
                position[pid] = (op.process, v.get("key"), n)
                open_append[(op.process, pid)] = op.index
                continue
            inv_index = open_append.pop((op.process, pid), None)
            if op.type != "ok":
                continue
            acked.add(pid)
            rid = _rid(v.get("record_id"))
            if rid is None:
                continue
            _bind(result, rid_payload, payload_rid, retried, rid, pid, op.index, "append")
            shard, batch = rid[0], rid[1]
            idx = done_index.setdefault(shard, [])
            mx = done_max.setdefault(shard, [])
            if inv_index is not None and idx:
                k = bisect_left(idx, inv_index)
                if k and mx[k - 1] >= batch:
                    add_anomaly(
                        result,
                        "append_order",
                        {
                            "shard": shard,
                            "payload_id": pid,
                            "batch": batch,
                            "earlier_acked_max_batch": mx[k - 1],
                            "op_index": op.index,
                        },
                    )
            idx.append(op.index)
            mx.append(max(batch, mx[-1]) if mx else batch)
        elif f in read_fs and op.type != "invoke":
            records = v.get("records")
            if not records:
                continue
            per_op = bool(v.get("complete")) or bool(v.get("final")) or f == "drain"
            op_reader = ("op", op.index) if per_op else None
            default_reader = v.get("consumer", op.process)
            for rec in records:
                if not isinstance(rec, dict):
                    continue
                reader = op_reader or rec.get("consumer", default_reader)
                pid = rec.get("payload_id")
                rid = _rid(rec.get("record_id"))
                checked_records += 1
                if rid is None:
                    if pid is not None:
                        first_seen.setdefault(reader, []).append(pid)
                    continue
                if pid is not None:
                    _bind(result, rid_payload, payload_rid, retried, rid, pid, op.index, "read")
                seq = (reader, rid[0])
                pos = (rid[1], rid[2])
                seen_here = seen.get(seq)
                if seen_here is None:
                    seen_here = seen[seq] = set()
                elif pos in seen_here:
                    redeliveries += 1
                    continue
                seen_here.add(pos)
                prev = last.get(seq)
                if prev is not None and pos <= prev:
                    add_anomaly(
                        result,
                        "shard_order",
                        {
                            "reader": reader,
                            "shard": rid[0],
                            "previous": [rid[0], *prev],
                            "seen": list(rid),
                            "op_index": op.index,
                        },
                    )
                else:
                    last[seq] = pos
                if pid is not None:
                    first_seen.setdefault(reader, []).append(pid)
            if per_op:
                # A complete read is its own sequence; drop its state once it is judged.
                for key in [k for k in seen if k[0] == op_reader]:
                    del seen[key]
                    last.pop(key, None)

    # key order, judged at the end because an ack may be recorded after a read that saw it
    for reader, pids in first_seen.items():
        last_pos: dict[tuple[Any, Any], int] = {}
        last_pid: dict[tuple[Any, Any], Any] = {}
        for pid in pids:
            if pid not in acked:
                continue
            p = position.get(pid)
            if p is None:
                continue
            pk = (p[0], p[1])
            prev_pos = last_pos.get(pk)
            if prev_pos is not None and p[2] < prev_pos:
                add_anomaly(
                    result,
                    "key_order",
                    {
                        "reader": reader,
                        "producer": p[0],
                        "key": p[1],
                        "read_after": last_pid[pk],
                        "payload_id": pid,
                    },
                )
            else:
                last_pos[pk] = p[2]
                last_pid[pk] = pid

    for kind in ("shard_order", "key_order", "append_order", "record_id_conflict"):
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    result.counts.update(
        records_checked=checked_records,
        redeliveries=redeliveries,
        reader_sequences=len(first_seen),
        acknowledged=len(acked),
    )
    if any(result.counts[k] for k in result.anomalies):
        result.valid = False
    return result


def _bind(
    result: Result,
    rid_payload: dict[tuple[int, int, int], Any],
    payload_rid: dict[Any, tuple[int, int, int]],
    retried: set[Any],
    rid: tuple[int, int, int],
    pid: Any,
    op_index: int,
    where: str,
) -> None:
    bound = rid_payload.setdefault(rid, pid)
    if bound != pid:
        add_anomaly(
            result,
            "record_id_conflict",
            {"record_id": list(rid), "payloads": [bound, pid], "op_index": op_index},
        )
        return
    if pid in retried:
        return
    had = payload_rid.setdefault(pid, rid)
    if had != rid:
        add_anomaly(
            result,
            "record_id_conflict",
            {
                "payload_id": pid,
                "record_ids": [list(had), list(rid)],
                "op_index": op_index,
                "seen_in": where,
            },
        )
