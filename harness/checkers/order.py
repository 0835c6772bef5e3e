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

from harness.checkers.result import Result, add_anomaly, without_gc
from harness.history import READ_FS, History, Op, as_ops

NAME = "order"
_NONE = object()
_SEQUENCES = (list, tuple)


def _rid(raw: Any) -> tuple[int, int, int] | None:
    if type(raw) in _SEQUENCES and len(raw) == 3:
        try:
            return (int(raw[0]), int(raw[1]), int(raw[2]))
        except (TypeError, ValueError):
            return None
    return None


@without_gc
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
    rid_payload: dict[tuple[Any, ...], Any] = {}
    payload_rid: dict[Any, tuple[Any, ...]] = {}
    # reader -> shard -> last record id it saw first; reader -> record ids it has seen
    last: dict[Any, dict[Any, tuple[Any, ...]]] = {}
    seen: dict[Any, set[tuple[Any, ...]]] = {}
    # reader sequence (per reader, across shards) -> payload ids seen first, in order
    first_seen: dict[Any, list[Any]] = {}
    redeliveries = 0
    checked_records = 0
    rid_payload_get = rid_payload.get

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
            bound = rid_payload.setdefault(rid, pid)
            if bound != pid:
                _conflict(result, rid, bound, pid, op.index)
            elif pid not in retried:
                had = payload_rid.setdefault(pid, rid)
                if had != rid:
                    _moved(result, pid, had, rid, op.index, "append")
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
            per_op = bool(v.get("complete")) or bool(v.get("final"))
            default_reader = ("op", op.index) if per_op else v.get("consumer", op.process)
            checked_records += len(records)
            # Usually every record of an op has one reader: keep its state at hand.
            cur_reader: Any = _NONE
            cur_last: dict[Any, tuple[Any, ...]] = {}
            cur_seen: set[tuple[Any, ...]] = set()
            cur_first: list[Any] = []
            for rec in records:
                if type(rec) is not dict:
                    continue
                reader = default_reader if per_op else rec.get("consumer", default_reader)
                if reader != cur_reader:
                    cur_reader = reader
                    if per_op:
                        cur_last, cur_seen = {}, set()
                    else:
                        cur_last = last.setdefault(reader, {})
                        cur_seen = seen.setdefault(reader, set())
                    cur_first = first_seen.setdefault(reader, [])
                pid = rec.get("payload_id")
                raw: Any = rec.get("record_id")
                if type(raw) not in _SEQUENCES or len(raw) != 3:
                    if pid is not None:
                        cur_first.append(pid)
                    continue
                rid = tuple(raw)
                if pid is not None:
                    # A pair already bound was checked both ways when it was bound.
                    bound = rid_payload_get(rid)
                    if bound is None:
                        rid_payload[rid] = pid
                        if payload_rid.setdefault(pid, rid) != rid and pid not in retried:
                            _moved(result, pid, payload_rid[pid], rid, op.index, "read")
                    elif bound != pid:
                        _conflict(result, rid, bound, pid, op.index)
                shard = rid[0]
                prev = cur_last.get(shard)
                if prev is None or rid > prev:
                    cur_last[shard] = rid
                    if not per_op:
                        cur_seen.add(rid)
                    if pid is not None:
                        cur_first.append(pid)
                    continue
                # Within one complete read only an immediate repeat counts as a repeat: its
                # records need no set of everything seen.
                if rid in cur_seen if not per_op else rid == prev:
                    redeliveries += 1
                    continue
                add_anomaly(
                    result,
                    "shard_order",
                    {
                        "reader": reader,
                        "shard": shard,
                        "previous": list(prev),
                        "seen": list(rid),
                        "op_index": op.index,
                    },
                )
                cur_seen.add(rid)
                if pid is not None:
                    cur_first.append(pid)

    # key order, judged at the end because an ack may be recorded after a read that saw it
    ranked = {pid: ((p[0], p[1]), p[2]) for pid, p in position.items() if pid in acked}
    for reader, pids in first_seen.items():
        latest: dict[tuple[Any, Any], tuple[int, Any]] = {}
        for pid in pids:
            r = ranked.get(pid)
            if r is None:
                continue
            pk, n = r
            prev = latest.get(pk)
            if prev is not None and n < prev[0]:
                add_anomaly(
                    result,
                    "key_order",
                    {
                        "reader": reader,
                        "producer": pk[0],
                        "key": pk[1],
                        "read_after": prev[1],
                        "payload_id": pid,
                    },
                )
            else:
                latest[pk] = (n, pid)

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


def _conflict(result: Result, rid: tuple[Any, ...], bound: Any, pid: Any, op_index: int) -> None:
    add_anomaly(
        result,
        "record_id_conflict",
        {"record_id": list(rid), "payloads": [bound, pid], "op_index": op_index},
    )


def _moved(
    result: Result, pid: Any, had: tuple[Any, ...], rid: tuple[Any, ...], op_index: int, where: str
) -> None:
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
