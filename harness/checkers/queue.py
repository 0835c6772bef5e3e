"""Queue checker: Jepsen's queue anomalies over subscription deliveries and shard reads.

Reads `append`, `fetch`, `read`, `drain`, `ack`, `consume`, `subscribe` and nemesis ops
(shapes in harness.history). A record is identified by its record id ``[shard, batch,
index]`` (the subscription and order checkers' convention); its payload is the
`payload_id` the producer put in it. Record ids order a shard's records; the records that
*exist* on a shard are every record id an acknowledged append was given or any read or
delivery returned. A delivery is one record of a `fetch` completion, made to the consumer
``(op process, record's consumer)`` of the op's subscription, at the time the fetch was
invoked; a read is one record of a `read` completion, judged within its op (a driver may
open a fresh reader for each read). An ack is certain when its op completed ``ok``; it is
taken as sent at its invoke time. Anomaly kinds:

* **inconsistent_offsets**: one record id bound to two different payload ids, by the
  acknowledgements of appends, deliveries and reads together. Counted once per record id.
* **lost**: an append acknowledged ``ok`` whose record no read or delivery returned (by
  its record id; by payload id for records read without one), although a record of the
  same shard with a higher record id, whose append was acknowledged *later*, was seen by
  an observer that had to pass the lost record's position: a complete or final read (it
  reads the shard from its start), or a subscription that started at or before it (offset
  earliest, or it delivered a lower record of the shard). So the record is not merely not
  read yet: the readers went past it.
* **poll_skip**: a consumer's deliveries of one shard jump over records that exist and
  had not been delivered to any consumer of the subscription, while the consumer still
  owned the shard: between the highest record it had been delivered (its *frontier*) and
  the next delivery above it. Within one read op, a read's records of one shard that jump
  over existing records are a poll skip too.
* **nonmonotonic_poll**: a consumer is delivered, below its frontier, a record without a
  redelivery reason. The reason is: the record was delivered before (to any consumer of
  the subscription) and not acknowledged yet, by a certain ack sent at least `grace_s`
  before the fetch began (an ack-timeout redelivery, or the resend of a departed
  consumer's in-flight records); or the consumer itself was delivered it before and had
  not acknowledged it by such an ack (its own ack timeout, whoever else acknowledged it:
  StreamingFetch is not ownership-checked, so two nodes may serve one subscription at
  once, and an ack sent to one does not stop the other's resend; the duplicate is still
  counted). Within one read op, a record of a shard below the last
  one read is non-monotonic too (the same record again is only counted as `read_repeats`).
* **duplicates**: a record delivered again after a certain ack of it was sent at least
  `grace_s` before the fetch began, i.e. beyond the redelivery of unacked records.
  Counted per such delivery.

Both poll kinds are judged within an *ownership epoch*: the consumer's frontier on a
shard is forgotten when the shard may have been reassigned since its previous delivery to
that consumer: another consumer of the subscription was delivered a record of the shard,
or the subscription saw a `consume` op (a consumer joined or left), a `fetch` that did
not complete ``ok`` (a broken stream, after which the consumer rejoins), or any nemesis
op (a fault may move the subscription to another node). The first delivery of an epoch
is judged by neither kind; losses across a reassignment are `lost`.

Figures: **unseen**, per shard, the number of acknowledged appends not yet read or
delivered to anyone, as ``[(t_s, count), ...]`` at up to `samples` evenly spaced times
(seconds since the history's first op): the consumers' lag, for a plot; and its maximum
and final value per shard (``unseen_max``, ``unseen_final``).

Which kinds fail depends on the delivery promise the test states: ``"at-least-once"``
fails every kind but duplicates (counted, reported only); ``"exactly-once"`` fails
duplicates too. Acknowledged appends never seen and passed by no observer are counted
(``never_seen``), not failed: with a drain, the subscription and stream-set checkers judge
them.

`check_all` and ``python -m harness.checkers`` run it when named (``queue``); their
``exactly_once`` option states the exactly-once promise.

Built for million-op histories: the acknowledged appends come from the shared append
columns (harness.checkers.table), record ids are placed in a per-shard index of positions
(every read's and every ack's at once by numpy where the shared read table has their
record ids as rows of ints; else with one lookup per run of consecutive records, the rest
of the run compared with the index in C), payload ids are compared by their shared dense
ids (by hash where a read's cannot be taken), and delivered / seen / acknowledged flags
are bytearrays indexed by position, so a run is judged as one interval.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from itertools import compress, count, repeat
from operator import eq, itemgetter, ne, not_
from typing import Any

import numpy as np

from harness.checkers.columns import PayloadIds, columns_of
from harness.checkers.result import NS_PER_S, Result, add_anomaly, without_gc
from harness.checkers.table import OK, Appends, Reads, ack_rows, distinct, table_of
from harness.history import History, Op, as_ops

NAME = "queue"
PROMISES = ("at-least-once", "exactly-once")
KINDS = ("inconsistent_offsets", "lost", "poll_skip", "nonmonotonic_poll", "duplicates")
# Kinds that fail the verdict whatever the promise; duplicates fail only exactly-once.
ALWAYS_FAIL = ("inconsistent_offsets", "lost", "poll_skip", "nonmonotonic_poll")
DEFAULT_SAMPLES = 200

_NEVER = 1 << 62  # a time meaning "not yet" (not acknowledged, not seen)
_SEQUENCES = (list, tuple)
_EXAMPLE_IDS = 5  # record ids listed in one poll anomaly's example
_get_shard = itemgetter(0)
_BATCH = 1 << 32  # record id key: batch * _BATCH + index (the index is a u32)
# Position of a run of records not found among the known record ids (yet), and of a
# record without a usable record id.
_NEW, _NOWHERE = -1, -2
_UNBOUND = -1  # no payload id bound to a position yet: no dense id, and hash(x) == -1 never

# Event codes, in history order.
_FETCH, _READ, _DRAIN, _BUMP, _BUMP_ALL = range(5)

RecordId = tuple[Any, ...]
# A run: records i..j of an op (all of one consumer) at positions p..p+(j-i).
Run = tuple[int, int, int]


@without_gc
def check(
    history: History | Iterable[Op],
    *,
    promise: str = "at-least-once",
    grace_s: float = 1.0,
    samples: int = DEFAULT_SAMPLES,
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Judge queue semantics; see the module docstring.

    `promise` is the delivery promise the test states ("at-least-once" or "exactly-once");
    `samples` is how many points each shard's unseen series has. `select` keeps only the
    ops it returns True for.
    """
    if promise not in PROMISES:
        raise ValueError(f"unknown delivery promise {promise!r}; choose from {', '.join(PROMISES)}")
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = Result(valid=True, checker=NAME)
    start = ops[0].time if ops else 0
    end = ops[-1].time if ops else 0

    # -- pass 1: acknowledged appends, and the events the other passes judge ---------------
    # (one Python-level pass: each op is touched once; on a busy machine, passes that
    # touch a million scattered objects again cost more than the interpreter saves)
    ok_pid: list[Any] = []
    ok_rid: list[Any] = []
    ok_t: list[int] = []
    ok_ids: list[int] | None = None  # their dense payload ids, from the shared table
    ok_rows: np.ndarray | None = None  # and their record ids as rows of ints
    walked: Iterable[Op] = ops
    table = table_of(ops)
    appends = table.appends if table is not None else None
    if table is not None and appends is not None:
        # The appends from the shared columns; the walk below skips them.
        ok_pid, ok_rid, ok_t, ok_ids, ok_rows = _acknowledged(appends)
        walked = map(ops.__getitem__, table.without("append"))
    subs: dict[Any, str] = {}  # subscription -> offset
    events: list[list[Any]] = []
    # certain acks: (invoked at, subscription, ids, consumer or None)
    acks: list[tuple[int, Any, Any, Any]] = []
    began_at: dict[Any, int] = {}
    open_acks: dict[Any, list[tuple[int, Any, Any, Any]]] = {}
    for op in walked:
        f = op.f
        kind = op.type
        if f == "append":
            if kind == "ok":
                v = op.value
                if type(v) is dict:
                    rid: Any = v.get("record_id")
                    pid = v.get("payload_id")
                    if type(rid) in _SEQUENCES and len(rid) == 3 and pid is not None:
                        ok_pid.append(pid)
                        ok_rid.append(rid)
                        ok_t.append(op.time)
        elif f == "fetch":
            if kind == "invoke":
                began_at[op.process] = op.time
                continue
            began = began_at.pop(op.process, op.time)
            v = op.value
            if type(v) is dict:
                if kind != "ok":
                    events.append([_BUMP, v.get("subscription", "")])
                if v.get("records"):
                    events.append([_FETCH, op, began, v])
        elif f == "read" or f == "drain":
            v = op.value
            if kind != "invoke" and type(v) is dict and v.get("records"):
                events.append([_READ if f == "read" else _DRAIN, op, op.time, v])
        elif f == "ack":
            v = op.value
            if type(v) is not dict:
                continue
            if kind == "invoke":
                open_acks.setdefault(op.process, []).append(
                    (op.time, v.get("subscription", ""), v.get("record_ids"), v.get("consumer"))
                )
                continue
            pending = open_acks.get(op.process)
            sent = pending.pop(0) if pending else (
                op.time, v.get("subscription", ""), v.get("record_ids"), v.get("consumer"))
            if kind == "ok" and sent[2]:
                acks.append(sent)
        elif f == "consume":
            v = op.value
            events.append([_BUMP, v.get("subscription", "") if type(v) is dict else ""])
        elif f == "subscribe":
            v = op.value
            if kind == "ok" and type(v) is dict:
                subs[v.get("subscription", "")] = str(v.get("offset", "")).lower()
        elif op.process == "nemesis":
            events.append([_BUMP_ALL])

    # -- positions: every record id that exists, ordered per shard --------------------------
    index = _Index(ok_rid, ok_rows)
    extras: dict[tuple[Any, Any], Any] = {}  # read, but given to no acknowledged append
    loose: dict[Any, int] = {}  # payload ids read without a record id -> first seen
    n_records = 0
    # Payload ids are compared by their dense ids (shared with the other checkers), or, if
    # some read's cannot be taken, by hash (equal payloads give equal hashes; a collision
    # of two different ids would hide one conflict, at odds of 2^-64).
    registry = appends.registry if appends is not None else None
    reads = [ev for ev in events if ev[0] <= _DRAIN]
    fields = [_fields(ev[3]["records"], ev[0] == _FETCH, registry) for ev in reads]
    if registry is not None and any(f[2] is None for f in fields):
        registry = None
        fields = [_fields(ev[3]["records"], ev[0] == _FETCH, None) for ev in reads]
    # Every read's runs at once, where the records are columns (table.Reads); else, and
    # for a fetch of more than one consumer, op by op.
    bulk: dict[int, list[Run]] = {}
    if table is not None and appends is not None and registry is not None and ok_ids is not None:
        bulk = _bulk_runs(table.reads, index, ops, appends)
    read_ops: list[int] = []  # (id of each read's op and its time, for _sightings)
    read_times: list[Any] = []
    for ev, (recs, rids, hashes, cons) in zip(reads, fields, strict=True):
        op, v = ev[1], ev[3]
        n_records += len(recs)
        read_ops.append(id(op))
        read_times.append(op.time)
        whole = bulk.get(id(op))
        if ev[0] == _FETCH:
            default = v.get("consumer", op.process)
            stretches = _segments(cons, default)
            if whole is not None and len(stretches) == 1:
                segs = [(stretches[0][2], whole)]
            else:
                segs = [(c, index.place(rids, a, b)) for a, b, c in stretches]
        else:
            segs = [(None, whole if whole is not None else index.place(rids, 0, len(rids)))]
        for _c, runs in segs:
            for i, _j, p in runs:
                if p == _NEW:
                    extras.setdefault((rids[i][0], index.key(rids[i])), rids[i])
                elif p == _NOWHERE and recs[i].get("payload_id") is not None:
                    loose.setdefault(recs[i]["payload_id"], op.time)
        ev.extend((rids, (recs, hashes), segs))
    if extras:
        remap, placed = index.add(extras)
        for ev in events:
            if ev[0] <= _DRAIN:
                ev[6] = [(c, _remap_runs(runs, remap, placed, ev[4], index)) for c, runs in ev[6]]

    # -- inconsistent offsets: one record id bound to two payload ids -----------------------
    size = index.size
    conflicts: dict[RecordId, dict[str, Any]] = {}
    ok_pos = index.ok_pos
    if registry is not None and ok_ids is not None:
        pid_at, phash = _bind_acknowledged(result, conflicts, index, ok_pid, ok_ids)
    else:
        pid_at = [None] * size
        phash = [_UNBOUND] * size  # the dense id (or hash) of pid_at's payload ids
        for p, pid, key in zip(ok_pos, ok_pid, map(hash, ok_pid), strict=True):
            bound = pid_at[p]
            if bound is None:
                pid_at[p] = pid
                phash[p] = key
            elif bound != pid:
                _conflict(result, conflicts, index.rid(p), bound, pid, "append", None)

    # -- pass 2: identities, deliveries and reads in history order ------------------------
    # (identities and first sightings of every read at once, where every read was placed in
    # bulk and binds no record id to a second payload id; else op by op below)
    sighted = None
    if registry is not None and table is not None and bulk:
        sighted = _sightings(table.reads, ops, read_ops, read_times, index, registry,
                             pid_at, phash)
    if sighted is not None:
        seen, first_t = sighted
    else:
        seen = bytearray(size)
        first_t = array("q", [_NEVER]) * size
    complete_seen = bytearray(size)
    judge = _Deliveries(result, index, ops, acks, int(grace_s * NS_PER_S))
    read_repeats = 0
    for ev in events:
        code = ev[0]
        if code == _BUMP:
            judge.sub_epoch[ev[1]] = judge.sub_epoch.get(ev[1], 0) + 1
            continue
        if code == _BUMP_ALL:
            judge.global_epoch += 1
            continue
        op, began, v, rids, (recs, hashes), segs = ev[1:7]
        t = op.time
        if sighted is None and type(hashes) is not list:
            hashes = hashes.tolist()  # (dense ids as an array: compared as a list here)
        for _c, runs in segs if sighted is None else ():  # identities and first sightings
            for i, j, p in runs:
                if p < 0:
                    continue
                hi = p + j - i + 1
                if phash[p:hi] != hashes[i:j + 1]:
                    _bind(result, conflicts, index, pid_at, phash, op, recs, hashes, i, j, p)
                q = seen.find(0, p, hi)
                while q != -1:
                    r = seen.find(1, q, hi)
                    r = hi if r == -1 else r
                    seen[q:r] = b"\x01" * (r - q)
                    first_t[q:r] = array("q", [t]) * (r - q)
                    q = seen.find(0, r, hi)
        if code == _FETCH:
            s = v.get("subscription", "")
            for consumer, runs in segs:
                judge.deliver(s, (op.process, consumer), rids, runs, began, op.index)
        elif code == _READ:
            runs = segs[0][1]
            read_repeats += _judge_read(result, index, op, rids, runs)
            if v.get("complete") or v.get("final"):
                for i, j, p in runs:
                    if p >= 0:
                        complete_seen[p:p + j - i + 1] = b"\x01" * (j - i + 1)

    # -- lost: acknowledged, never seen, and passed by an observer --------------------------
    never_seen = 0
    unseen = list(compress(range(len(ok_pos)), map(not_, map(seen.__getitem__, ok_pos))))
    if unseen:
        ack_of = dict(zip(reversed(ok_pos), reversed(ok_t), strict=True))  # first ack wins
        observers: list[tuple[str, bytearray, bool]] = [("complete read", complete_seen, True)]
        for s, d in judge.delivered.items():
            observers.append((f"subscription {s}", d, subs.get(s) == "earliest"))
        reported: set[int] = set()
        for k in unseen:
            p, pid, t = ok_pos[k], ok_pid[k], ok_t[k]
            if p in reported or pid in loose:
                continue
            reported.add(p)
            witness = _witness(index, observers, ack_of, p, t)
            if witness is None:
                never_seen += 1
                continue
            q, seen_by = witness
            add_anomaly(
                result,
                "lost",
                {
                    "payload_id": pid,
                    "record_id": index.rid(p),
                    "acked_at_s": round((t - start) / NS_PER_S, 3),
                    "passed_by": seen_by,
                    "later_record": index.rid(q),
                    "later_payload": pid_at[q],
                    "later_acked_at_s": round((ack_of[q] - start) / NS_PER_S, 3),
                },
            )

    # -- unseen over time -----------------------------------------------------------------
    seen_at: list[int] | np.ndarray
    if loose:
        seen_at = [min(first_t[p], loose.get(pid, _NEVER))
                   for p, pid in zip(ok_pos, ok_pid, strict=True)]
    else:
        seen_at = np.frombuffer(first_t, dtype=np.int64)[np.array(ok_pos, dtype=np.int64)]
    series, peak, final = _unseen_series(index.members, ok_t, seen_at, start, end, samples)
    result.figures["unseen"] = series
    result.figures["unseen_max"] = peak
    result.figures["unseen_final"] = final

    for kind in KINDS:
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    result.counts.update(
        acked_appends=len(ok_pid),
        records_checked=n_records,
        records_seen=seen.count(1) + len(loose),
        deliveries=judge.deliveries,
        redeliveries=judge.redeliveries,
        read_repeats=read_repeats,
        never_seen=never_seen,
        subscriptions=len(judge.delivered),
    )
    if never_seen:
        result.notes.append(
            f"{never_seen} acknowledged appends were never read or delivered, and no reader "
            "went past them: not judged here (with a drain, the subscription and stream-set "
            "checkers judge them)"
        )
    failing = [k for k in ALWAYS_FAIL if result.counts[k]]
    if result.counts["duplicates"]:
        if promise == "exactly-once":
            failing.append("duplicates")
        else:
            result.notes.append(
                f"{result.counts['duplicates']} deliveries of acknowledged records: allowed "
                "by the at-least-once promise (counted only)"
            )
    result.notes.append(f"judged against the {promise} promise")
    if failing:
        result.valid = False
    return result


# -- records and positions ---------------------------------------------------------------


def _acknowledged(
    appends: Appends,
) -> tuple[list[Any], list[Any], list[int], list[int], np.ndarray | None]:
    """The acknowledged appends with a payload id and a record id of three: their payload
    ids, record ids, times and dense payload ids (what pass 1 takes of the append ops),
    and their record ids as rows of ints where the append columns have them."""
    oks = np.flatnonzero(appends.types == OK)
    ids = appends.pids[oks]
    times = appends.times[oks]
    rids = appends.rids
    keep = np.ones(len(oks), dtype=bool)
    if appends.rid_array is None:
        keep[:] = [type(rid) in _SEQUENCES and len(rid) == 3 for rid in rids]
    null = appends.registry.index.get(None)
    if null is not None:
        keep &= ids != null
    rows = appends.rid_array
    if not keep.all():
        rids = list(compress(rids, keep.tolist()))
        ids, times = ids[keep], times[keep]
        rows = rows[keep] if rows is not None else None
    id_list = ids.tolist()
    pids = list(map(appends.registry.pids.__getitem__, id_list))
    return pids, rids, times.tolist(), id_list, rows


def _sightings(
    reads: Reads | None,
    ops: list[Op],
    read_ops: list[int],
    times: list[Any],
    index: _Index,
    registry: PayloadIds,
    pid_at: list[Any],
    phash: list[int],
) -> tuple[bytearray, array[int]] | None:
    """Pass 2's identities and first sightings for every read at once (`read_ops`: the ids
    of the read events' ops, `times`: their times, in history order): each record's
    position (in the index as it stands, extras added), the payload id that binds each
    position (its acknowledged append's, else the first record's there with one), and the
    time each position was first seen. Binds `pid_at` and `phash` as the op-by-op pass
    would and returns (seen, first_t); None (nothing changed) where the reads are not the
    read table's ops, a record id is not placed, an op time is no int, or some record
    disagrees with its position's payload id (the op-by-op pass reports it)."""
    if reads is None or reads.rows is None or reads.ids is None:
        return None
    if read_ops != [id(ops[i]) for i in reads.positions]:
        return None
    if not set(map(type, times)) <= {int} or (times and not
                                             -(1 << 62) < min(times) <= max(times) < 1 << 62):
        return None
    pos = _positions(reads.rows, index)
    if pos is None or (len(pos) and pos.min() < 0):
        return None
    ids, size, n = reads.ids, index.size, len(pos)
    null = registry.index.get(None)
    named = np.flatnonzero(ids != null) if null is not None else np.arange(n)
    first_named = np.full(size, n, dtype=np.int64)
    np.minimum.at(first_named, pos[named], named)
    bound = np.array(phash, dtype=np.int64)
    fresh = np.flatnonzero((bound == _UNBOUND) & (first_named < n))
    bound[fresh] = ids[first_named[fresh]]
    if np.any(bound[pos[named]] != ids[named]):
        return None
    starts = reads.starts
    ks = first_named[fresh]
    es = np.searchsorted(starts, ks, side="right") - 1
    columns = reads.columns
    for p, k, e, i in zip(fresh.tolist(), ks.tolist(), es.tolist(), (ks - starts[es]).tolist(),
                          strict=True):
        pid_at[p] = columns[e].pids[i]
        phash[p] = int(ids[k])
    first_any = np.full(size, n, dtype=np.int64)
    np.minimum.at(first_any, pos, np.arange(n))
    hit = first_any < n
    when = np.full(size, _NEVER, dtype=np.int64)
    when[hit] = np.repeat(np.array(times, dtype=np.int64), np.diff(starts))[first_any[hit]]
    return bytearray(hit.astype(np.uint8).tobytes()), array("q", when.tobytes())


def _row_keys(rows: np.ndarray) -> np.ndarray | None:
    """The record id key (batch * _BATCH + index) of each non-empty row of (shard, batch,
    index), or None unless every batch is below 2**31 and every index below 2**32, both
    non-negative: then, and only then, a key fits in an int64."""
    batch, at = rows[:, 1], rows[:, 2]
    if batch.min() < 0 or batch.max() >= 1 << 31 or at.min() < 0 or at.max() >= _BATCH:
        return None
    return batch * _BATCH + at  # type: ignore[no-any-return]


def _positions(rows: np.ndarray, index: _Index) -> np.ndarray | None:
    """The position of each (shard, batch, index) row in `index` as it stands (_NEW: none),
    by a search of each shard's sorted keys; None unless every batch is below 2**31 and
    every index below 2**32, non-negative (so that a key fits in an int64), and the index
    keys are ints. Kept for the last `rows` while the layout stands: the bulk runs and the
    sightings place the same read rows (read-only)."""
    if not index.int_keys:
        return None
    held = index.placed_rows
    if held is not None and held[0] is rows:
        return held[1]
    pos = np.full(len(rows), _NEW, dtype=np.int64)
    if not len(rows):
        return pos
    keys = _row_keys(rows)
    if keys is None:
        return None
    shards = rows[:, 0]
    for s in distinct(shards).tolist():
        mine_keys = index.key_array(s)
        if mine_keys is None:
            return None
        if not len(mine_keys):
            continue
        mine = np.flatnonzero(shards == s)
        k = np.minimum(np.searchsorted(mine_keys, keys[mine]), len(mine_keys) - 1)
        found = mine_keys[k] == keys[mine]
        pos[mine[found]] = index.span[s][0] + k[found]
    pos.flags.writeable = False
    index.placed_rows = (rows, pos)
    return pos


def _bulk_runs(reads: Reads | None, index: _Index, ops: list[Op],
               appends: Appends) -> dict[int, list[Run]]:
    """What `index.place` makes of each whole read of `reads` (by id of its op), found for
    all at once: each record's position by a search of its shard's sorted keys, and a run
    wherever the next record is at the next position. Nothing (every read placed op by op)
    unless every record id read and acknowledged is a list of three ints with a batch
    below 2**31 and an index below 2**32 (so that a key fits in an int64): then equal keys
    are equal lists, which is what `place` compares."""
    if reads is None or reads.rows is None or not len(reads.rows) or not index.int_keys:
        return {}
    if appends.rid_array is None or set(map(type, appends.rids)) - {list}:
        return {}
    rows = reads.rows
    pos = _positions(rows, index)
    if pos is None:
        return {}
    starts = reads.starts
    new_run = np.ones(len(rows), dtype=bool)
    new_run[1:] = (pos[1:] != pos[:-1] + 1) | (pos[1:] < 0) | (pos[:-1] < 0)
    new_run[starts[:-1]] = True
    first = np.flatnonzero(new_run)
    last = np.append(first[1:], len(rows)) - 1
    op_first = np.searchsorted(first, starts)  # each op's first run, and the end
    local = first - np.repeat(starts[:-1], np.diff(op_first))
    runs = list(zip(local.tolist(), (local + last - first).tolist(), pos[first].tolist(),
                    strict=True))
    bounds = op_first.tolist()
    return {id(ops[i]): runs[bounds[k]:bounds[k + 1]] for k, i in enumerate(reads.positions)}


def _fields(
    recs: list[Any], want_consumers: bool, registry: PayloadIds | None
) -> tuple[list[Any], list[Any], list[int] | np.ndarray | None, list[Any]]:
    """The records (a record that is not a dict becomes an empty one), then their record
    ids, the dense ids in `registry` of their payload ids (an array; None if they cannot
    all be taken) or without a registry their hashes, and (if wanted) their consumers,
    aligned.
    The columns are shared with the other checkers (harness.checkers.columns): read,
    never changed."""
    columns = columns_of(recs)
    if registry is not None:
        ids = columns.id_array(registry) if columns is not None else None
        if columns is None or ids is None:
            return recs, [], None, []
        return recs, columns.rids, ids, columns.consumers if want_consumers else []
    if columns is not None:
        try:
            hashes = list(map(hash, columns.pids))
        except TypeError:  # an unhashable payload id: the pass below hashes its repr
            pass
        else:
            return recs, columns.rids, hashes, columns.consumers if want_consumers else []
    try:
        rids = list(map(dict.get, recs, repeat("record_id")))
        hashes = list(map(hash, map(dict.get, recs, repeat("payload_id"))))
        cons = list(map(dict.get, recs, repeat("consumer"))) if want_consumers else []
    except TypeError:  # a record that is not a dict, or an unhashable payload id
        recs = [r if type(r) is dict else {} for r in recs]
        rids = [r.get("record_id") for r in recs]
        hashes = [_hash(r.get("payload_id")) for r in recs]
        cons = [r.get("consumer") for r in recs] if want_consumers else []
    return recs, rids, hashes, cons


def _hash(value: Any) -> int:
    try:
        return hash(value)
    except TypeError:
        return hash(repr(value))


def _sorted(items: Iterable[Any], key: Callable[[Any], Any] | None = None) -> list[Any]:
    out = list(items)
    try:
        out.sort(key=key)
    except TypeError:  # ids of mixed types in a hand-made history
        out.sort(key=repr if key is None else lambda x: repr(key(x)))
    return out


class _Index:
    """Every existing record id, ordered per shard, as positions 0..size-1. Shards are
    separated by one empty position, so consecutive positions are always one shard's.

    Within a shard a record id is keyed by ``batch * 2**32 + index`` (HStreamDB's u64 batch
    id and u32 index: an int, cheap to sort and hash), or by the id as a tuple where the
    history's ids are not ints. `lists[p]` is the record id at position p as the history
    spelt it; `ok_pos[k]` is the position of the k-th acknowledged append. `place` looks
    ids up in the first layout; `add` keeps the remapping beside it.
    """

    def __init__(self, ok_rid: list[Any], rows: np.ndarray | None = None) -> None:
        self._remap: list[int] | None = None
        self._placed: dict[tuple[Any, Any], int] = {}
        self._rank: dict[Any, dict[Any, int]] | None = None
        self._first_layout: dict[Any, tuple[list[Any], int]] | None = None
        if rows is not None and self._sort_rows(ok_rid, rows):
            return
        n = len(ok_rid)
        shard_col = list(map(_get_shard, ok_rid))
        try:
            keys: list[Any] = [r[1] * _BATCH + r[2] for r in ok_rid]
            self.int_keys = True
        except TypeError:
            keys = list(map(tuple, ok_rid))
            self.int_keys = False
        shards = set(shard_col)
        members: dict[Any, list[int]] = {}
        if len(shards) <= 16:
            for s in shards:
                members[s] = list(compress(range(n), map(eq, shard_col, repeat(s))))
        else:
            for k, s in enumerate(shard_col):
                members.setdefault(s, []).append(k)
        self.keys: dict[Any, list[Any]] = {}
        self.spelt: dict[Any, list[Any]] = {}
        for s, ks in members.items():
            mine = list(map(keys.__getitem__, ks))
            # in history order, so nearly sorted: timsort's best case
            perm = _sorted(range(len(ks)), mine.__getitem__)
            members[s] = ks = list(map(ks.__getitem__, perm))
            self.keys[s] = list(map(mine.__getitem__, perm))
            self.spelt[s] = list(map(ok_rid.__getitem__, ks))
        self.members = members  # shard -> its acknowledged appends, in position order
        twice = [s for s, ks in self.keys.items() if len(set(ks)) != len(ks)]
        for s in twice:  # a record id acknowledged twice has one position
            kept: dict[Any, Any] = {}
            for key, spelt in zip(self.keys[s], self.spelt[s], strict=True):
                kept.setdefault(key, spelt)
            self.keys[s], self.spelt[s] = list(kept), list(kept.values())
        self._layout()
        self.ok_pos = ok_pos = [0] * n
        for s, ks in members.items():
            if s in twice:
                rank = self.rank[s]
                for k in ks:
                    ok_pos[k] = rank[keys[k]]
            else:
                for q, k in enumerate(ks, self.span[s][0]):
                    ok_pos[k] = q

    def _sort_rows(self, ok_rid: list[Any], rows: np.ndarray) -> bool:
        """The index by numpy, where the acknowledged record ids are the rows of three ints
        given (the shared append columns'), batches below 2**31 and indexes below 2**32
        (so that a key fits in an int64), none acknowledged twice: what the Python sort
        makes of them. False (nothing set) otherwise."""
        n = len(ok_rid)
        if len(rows) != n or not n:
            return False
        keys = _row_keys(rows)
        if keys is None:
            return False
        shard_col = rows[:, 0]
        members: dict[Any, list[int]] = {}
        self.keys = {}
        self.spelt = {}
        sorted_members: dict[Any, np.ndarray] = {}
        for s in set(shard_col.tolist()):  # (the order the Python sort meets them in)
            mine = np.flatnonzero(shard_col == s)
            ks = mine[np.argsort(keys[mine], kind="stable")]
            mine_keys = keys[ks]
            if len(mine_keys) > 1 and not np.all(mine_keys[1:] > mine_keys[:-1]):
                return False  # a record id acknowledged twice: the Python sort keeps one
            sorted_members[s] = ks
            members[s] = ks.tolist()
            self.keys[s] = mine_keys.tolist()
            self.spelt[s] = list(map(ok_rid.__getitem__, members[s]))
        self.int_keys = True
        self.members = members
        self._layout()
        for s, ks in sorted_members.items():  # (key_array would convert keys[s] back)
            self._key_arrays[s] = keys[ks]
        ok_pos = np.zeros(n, dtype=np.int64)
        for s, ks in sorted_members.items():
            ok_pos[ks] = self.span[s][0] + np.arange(len(ks))
        self.ok_pos = ok_pos.tolist()
        return True

    @property
    def rank(self) -> dict[Any, dict[Any, int]]:
        """Shard -> key -> position, in the first layout (what `place` looks ids up in):
        built on first need, since the reads placed in bulk never ask."""
        if self._rank is None:
            layout = self._first_layout or {
                s: (ks, self.span[s][0]) for s, ks in self.keys.items()}
            self._rank = {s: dict(zip(ks, range(base, base + len(ks)), strict=True))
                          for s, (ks, base) in layout.items()}
        return self._rank

    def key_array(self, s: Any) -> np.ndarray | None:
        """Shard s's keys as an int64 array (empty for a shard without records), kept for
        the layout; None where a key is no int that fits (not compared as numpy would)."""
        got = self._key_arrays.get(s)
        if got is None:
            try:
                got = np.array(self.keys.get(s, []))
            except OverflowError:
                return None
            if len(got) and got.dtype != np.int64:
                return None
            self._key_arrays[s] = got = got.astype(np.int64, copy=False)
        return got

    def _layout(self) -> None:
        self._key_arrays: dict[Any, np.ndarray] = {}
        # (rows, their positions in this layout): see _positions
        self.placed_rows: tuple[np.ndarray, np.ndarray] | None = None
        self.lists: list[Any] = []
        self.span: dict[Any, tuple[int, int]] = {}
        base = 0
        for s in _sorted(self.keys):
            n = len(self.keys[s])
            self.lists += self.spelt[s]
            self.lists.append(None)
            self.span[s] = (base, base + n - 1)
            base += n + 1
        self.size = base

    def key(self, rid: Any) -> Any:
        """A record id's key within its shard (TypeError if it has none)."""
        return rid[1] * _BATCH + rid[2] if self.int_keys else tuple(rid)

    def rid(self, p: int) -> list[Any]:
        return list(self.lists[p])

    def place(self, rids: list[Any], a: int, b: int) -> list[Run]:
        """rids[a:b] as runs of consecutive positions: one lookup per run, then the ids
        that follow are compared with the index's in order."""
        runs: list[Run] = []
        rank_get = self.rank.get
        lists = self.lists
        i = a
        while i < b:
            rid = rids[i]
            try:
                if type(rid) not in _SEQUENCES or len(rid) != 3:
                    raise TypeError
                key = self.key(rid)
                rank = rank_get(rid[0])
            except TypeError:
                runs.append((i, i, _NOWHERE))
                i += 1
                continue
            p = _NEW if rank is None else rank.get(key, _NEW)
            if self._remap is not None:
                p = self._remap[p] if p >= 0 else self._placed.get((rid[0], key), _NEW)
            if p == _NEW:
                runs.append((i, i, _NEW))
                i += 1
                continue
            # how far the op goes on in the index's order, up to the shard's end: C-level
            # comparisons of windows that double while they match
            limit = min(b - i, self.span[rid[0]][1] - p + 1)
            n, w = 1, 64
            while n < limit:
                m = min(w, limit - n)
                if lists[p + n:p + n + m] == rids[i + n:i + n + m]:
                    n += m
                    w *= 2
                    continue
                n += next(compress(count(), map(ne, lists[p + n:p + n + m],
                                                rids[i + n:i + n + m])))
                break
            runs.append((i, i + n - 1, p))
            i += n
        return runs

    def add(
        self, extras: dict[tuple[Any, Any], Any]
    ) -> tuple[list[int], dict[tuple[Any, Any], int]]:
        """Add record ids, as {(shard, key): spelt id}, after the last `place` of the first
        layout; returns old position -> new position (ending with -1, so that a lookup of
        -1 gives -1) and the new ids' positions."""
        old_span = dict(self.span)
        old_size = self.size
        if self._rank is None and self._first_layout is None:  # `rank` wants the first
            self._first_layout = {s: (list(ks), self.span[s][0]) for s, ks in self.keys.items()}
        grouped: dict[Any, list[Any]] = {}
        for s, key in extras:
            grouped.setdefault(s, []).append(key)
        inserted: dict[Any, list[int]] = {}
        for s, new in grouped.items():
            new[:] = _sorted(new)
            keys = self.keys.setdefault(s, [])
            spelt = self.spelt.setdefault(s, [])
            inserted[s] = at = [bisect_left(keys, key) for key in new]
            # from the back; at one insertion point the larger key goes in first
            for k, key in sorted(zip(at, new, strict=True), reverse=True):
                keys.insert(k, key)
                spelt.insert(k, extras[(s, key)])
        self._layout()
        remap = [-1] * (old_size + 1)
        for s, (first, last) in old_span.items():
            base = self.span[s][0]
            lo = 0
            for shift, k in enumerate([*inserted.get(s, []), last - first + 1]):
                # old ids lo..k-1 of this shard moved up by `shift`
                remap[first + lo:first + k] = range(base + lo + shift, base + k + shift)
                lo = k
        self.ok_pos = list(map(remap.__getitem__, self.ok_pos))
        if self._remap is not None:  # a second add: compose the remappings
            remap = [remap[q] for q in self._remap[:-1]] + [-1]
            self._placed = {sk: remap[q] for sk, q in self._placed.items()}
        placed = {}
        for s, new in grouped.items():
            base = self.span[s][0]
            for key in new:
                placed[(s, key)] = base + bisect_left(self.keys[s], key)
        self._remap = remap
        self._placed.update(placed)
        return remap, placed


def _remap_runs(
    runs: list[Run], remap: list[int], placed: dict[tuple[Any, Any], int], rids: list[Any],
    index: _Index,
) -> list[Run]:
    out: list[Run] = []
    for i, j, p in runs:
        if p == _NOWHERE:
            out.append((i, j, p))
        elif p == _NEW:
            out.append((i, i, placed[(rids[i][0], index.key(rids[i]))]))
        elif remap[p + j - i] - remap[p] == j - i:
            out.append((i, j, remap[p]))
        else:  # a new id fell inside the run: split it where it did
            start = i
            for k in range(i + 1, j + 2):
                if k == j + 1 or remap[p + k - i] != remap[p + k - i - 1] + 1:
                    out.append((start, k - 1, remap[p + start - i]))
                    start = k
    return out


def _segments(cons: list[Any], default: Any) -> list[tuple[int, int, Any]]:
    """Contiguous stretches of one consumer: (start, stop, consumer)."""
    n = len(cons)
    first = cons[0] if n else None
    if cons.count(first) == n:
        return [(0, n, default if first is None else first)]
    out = []
    i = 0
    for k in range(1, n + 1):
        if k == n or cons[k] != cons[i]:
            out.append((i, k, default if cons[i] is None else cons[i]))
            i = k
    return out


# -- judging -----------------------------------------------------------------------------


def _bind(
    result: Result,
    conflicts: dict[RecordId, dict[str, Any]],
    index: _Index,
    pid_at: list[Any],
    phash: list[int],
    op: Op,
    recs: list[Any],
    hashes: list[int],
    i: int,
    j: int,
    p: int,
) -> None:
    """Records i..j at positions p..: bind unbound positions to their payload ids, and
    report the ones bound to another."""
    for k in range(i, j + 1):
        pid = recs[k].get("payload_id")
        if pid is None:
            continue
        q = p + k - i
        bound = pid_at[q]
        if bound is None:
            pid_at[q] = pid
            phash[q] = hashes[k]
        elif bound != pid:
            _conflict(result, conflicts, index.rid(q), bound, pid, op.f, op.index)


def _bind_acknowledged(
    result: Result,
    conflicts: dict[RecordId, dict[str, Any]],
    index: _Index,
    ok_pid: list[Any],
    ok_ids: list[int],
) -> tuple[list[Any], list[int]]:
    """The acknowledged appends' bindings, by dense payload ids, in a few passes of numpy:
    each position's payload id (`pid_at`) and its dense id (`phash`) are those of the first
    acknowledged append placed there, and every later one placed there with another id is
    an inconsistent offset, reported in the appends' order. (Dense ids are equal exactly when
    the payload ids are: the op-by-op loop in `check` compares the payload ids themselves.)"""
    size = index.size
    pos = np.array(index.ok_pos, dtype=np.int64)
    ids = np.array(ok_ids, dtype=np.int64)
    places, first = np.unique(pos, return_index=True)
    phash = np.full(size, _UNBOUND, dtype=np.int64)
    phash[places] = ids[first]
    pids = np.empty(len(ok_pid), dtype=object)
    pids[:] = ok_pid
    pid_at = np.full(size, None, dtype=object)
    pid_at[places] = pids[first]
    firsts = np.zeros(size, dtype=np.int64)
    firsts[places] = first
    for k in np.flatnonzero(ids != phash[pos]).tolist():
        p = int(pos[k])
        _conflict(result, conflicts, index.rid(p), ok_pid[int(firsts[p])], ok_pid[k], "append",
                  None)
    return pid_at.tolist(), phash.tolist()


def _conflict(
    result: Result,
    conflicts: dict[RecordId, dict[str, Any]],
    rid: list[Any],
    bound: Any,
    pid: Any,
    where: str,
    op_index: int | None,
) -> None:
    tp = tuple(rid)
    example = conflicts.get(tp)
    if example is None:
        conflicts[tp] = example = {
            "record_id": list(rid),
            "payloads": [bound, pid],
            "seen_in": where,
            "op_index": op_index,
        }
        add_anomaly(result, "inconsistent_offsets", example)
    elif pid not in example["payloads"]:
        example["payloads"].append(pid)


class _Deliveries:
    """What each consumer was delivered: frontiers per ownership epoch, and redeliveries."""

    def __init__(
        self, result: Result, index: _Index, ops: list[Op], acks: list[tuple[int, Any, Any, Any]],
        grace: int,
    ) -> None:
        self.result = result
        self.ops = ops  # (for the shared table's ack rows)
        self.index = index
        self.grace = grace
        self._acks = acks
        self._ack_t: dict[Any, array[int]] | None = None
        self._own_ack_t: dict[Any, array[int]] | None = None
        self.delivered: dict[Any, bytearray] = {}
        # (subscription, consumer name) -> positions delivered to that consumer
        self.delivered_to: dict[tuple[Any, Any], bytearray] = {}
        self.sub_epoch: dict[Any, int] = {}
        self.global_epoch = 0
        self.frontier: dict[tuple[Any, Any, Any], tuple[tuple[int, int], int]] = {}
        self.last_receiver: dict[tuple[Any, Any], Any] = {}
        self.deliveries = 0
        self.redeliveries = 0

    def _first_acks(self, key: Callable[[Any, Any], Any]) -> dict[Any, array[int]]:
        """When a certain ack of each position was first sent, per key(subscription,
        consumer) of the acks."""
        first = self._first_acks_in_bulk(key)
        if first is not None:
            return first
        first = {}
        flags: dict[Any, bytearray] = {}
        size = self.index.size
        for sent, sub_, raw, who in self._acks:
            k = key(sub_, who)
            times = first.get(k)
            if times is None:
                times = first[k] = array("q", [_NEVER]) * size
                flags[k] = bytearray(size)
            acked = flags[k]
            ids = raw if type(raw) is list else list(raw)
            for i, j, q in self.index.place(ids, 0, len(ids)):
                if q < 0:
                    continue
                n = j - i + 1
                if acked.find(1, q, q + n) == -1:
                    acked[q:q + n] = b"\x01" * n
                    times[q:q + n] = array("q", [sent]) * n
                else:
                    for r in range(q, q + n):
                        times[r] = min(times[r], sent)
                        acked[r] = 1
        return first

    def _first_acks_in_bulk(
        self, key: Callable[[Any, Any], Any]
    ) -> dict[Any, array[int]] | None:
        """`_first_acks` for every ack at once, where each acknowledged record id is a
        list of three ints (found by `_positions`): the least send time of each position,
        per key. None where they are not."""
        acks = self._acks
        sent = [a[0] for a in acks]
        if not acks or not set(map(type, sent)) <= {int} or not all(
                type(a[2]) is list for a in acks):
            return None
        rows = ack_rows(self.ops, [a[2] for a in acks])
        pos = _positions(rows, self.index) if rows is not None else None
        if pos is None:
            return None
        try:
            times = np.array(sent, dtype=np.int64)
        except OverflowError:
            return None
        groups: dict[Any, int] = {}
        group = np.fromiter((groups.setdefault(key(a[1], a[3]), len(groups)) for a in acks),
                            np.int64, len(acks))
        lengths = np.fromiter(map(len, (a[2] for a in acks)), np.int64, len(acks))
        group, times = np.repeat(group, lengths), np.repeat(times, lengths)
        found = pos >= 0
        first: dict[Any, array[int]] = {}
        for k, g in groups.items():
            mine = found & (group == g)
            least = np.full(self.index.size, _NEVER, dtype=np.int64)
            np.minimum.at(least, pos[mine], times[mine])
            first[k] = array("q", least.tobytes())
        return first

    def acked_at(self, s: Any, p: int) -> int:
        """When a certain ack of position p was first sent to subscription s (or _NEVER).
        Built on first need: only redeliveries ask."""
        if self._ack_t is None:
            self._ack_t = self._first_acks(lambda sub_, _who: sub_)
        times = self._ack_t.get(s)
        return _NEVER if times is None else times[p]

    def own_ack_at(self, s: Any, consumer: Any, p: int) -> int:
        """When `consumer` itself first sent a certain ack of position p to subscription s
        (or _NEVER); an ack that names no consumer counts as anyone's."""
        if self._own_ack_t is None:
            self._own_ack_t = self._first_acks(lambda sub_, who: (sub_, who))
        mine = self._own_ack_t.get((s, consumer))
        anyone = self._own_ack_t.get((s, None))
        return min(_NEVER if mine is None else mine[p], _NEVER if anyone is None else anyone[p])

    def deliver(
        self,
        s: Any,
        ck: tuple[Any, Any],
        rids: list[Any],
        runs: list[Run],
        began: int,
        op_index: int,
    ) -> None:
        """Records of one fetch delivered to consumer `ck`, as runs of consecutive positions."""
        d = self.delivered.get(s)
        if d is None:
            d = self.delivered[s] = bytearray(self.index.size)
        mine = self.delivered_to.get((s, ck[1]))
        if mine is None:
            mine = self.delivered_to[(s, ck[1])] = bytearray(self.index.size)
        epoch = (self.global_epoch, self.sub_epoch.get(s, 0))
        acked_by = began - self.grace
        for i, j, lo in runs:
            if lo < 0:
                continue
            n = j - i + 1
            hi = lo + n - 1
            self.deliveries += n
            again: list[int] = []
            if d.find(1, lo, hi + 1) != -1:
                again = list(compress(range(lo, hi + 1), d[lo:hi + 1]))
                self.redeliveries += len(again)
                for p in again:
                    if self.acked_at(s, p) <= acked_by:
                        add_anomaly(self.result, "duplicates", {
                            "subscription": s, "consumer": ck[1],
                            "record_id": self.index.rid(p), "op_index": op_index})
            d[lo:hi + 1] = b"\x01" * n
            own: list[int] = []
            if mine.find(1, lo, hi + 1) != -1:
                own = list(compress(range(lo, hi + 1), mine[lo:hi + 1]))
            mine[lo:hi + 1] = b"\x01" * n
            shard = rids[i][0]
            key = (s, ck, shard)
            held = self.frontier.get(key)
            owner = self.last_receiver.get((s, shard))
            self.last_receiver[(s, shard)] = ck
            if held is None or held[0] != epoch or owner != ck:
                self.frontier[key] = (epoch, hi)  # a new ownership epoch starts here
                continue
            top = held[1]
            if lo > top:
                if lo > top + 1 and d.find(0, top + 1, lo) != -1:
                    _skip(self.result, self.index, d, _consumer(s, ck), shard, top, lo,
                          op_index)
                self.frontier[key] = (epoch, hi)
                continue
            # below the frontier: only a record delivered before and not acked is excused:
            # not acked by anyone, or (its own ack timeout) not by this consumer
            redelivered, resent_to_me = set(again), set(own)
            unexcused = [p for p in range(lo, min(hi, top) + 1)
                         if p not in redelivered
                         or (self.acked_at(s, p) <= acked_by
                             and (p not in resent_to_me
                                  or self.own_ack_at(s, ck[1], p) <= acked_by))]
            if unexcused:
                _nonmonotonic(self.result, self.index, _consumer(s, ck), shard, top,
                              unexcused, op_index)
            if hi > top:
                self.frontier[key] = (epoch, hi)


def _consumer(s: Any, ck: tuple[Any, Any]) -> dict[str, Any]:
    return {"subscription": s, "consumer": ck[1], "process": ck[0]}


def _judge_read(
    result: Result, index: _Index, op: Op, rids: list[Any], runs: list[Run]
) -> int:
    """Skips and steps back within one read op, per shard; returns the repeats."""
    if len(runs) == 1:
        return 0
    repeats = 0
    last: dict[Any, int] = {}
    who = {"reader": op.process}
    for i, j, lo in runs:
        if lo < 0:
            continue
        hi = lo + j - i
        shard = rids[i][0]
        prev = last.get(shard)
        if prev is None:
            last[shard] = hi
            continue
        if lo > prev + 1:
            _skip(result, index, None, who, shard, prev, lo, op.index)
        elif lo == prev:
            repeats += 1
        elif lo < prev:
            _nonmonotonic(result, index, who, shard, prev,
                          list(range(lo, min(hi, prev) + 1)), op.index)
        last[shard] = max(prev, hi)
    return repeats


def _skip(
    result: Result,
    index: _Index,
    d: bytearray | None,
    who: dict[str, Any],
    shard: Any,
    top: int,
    lo: int,
    op_index: int,
) -> None:
    """Positions top+1..lo-1 were jumped over (with `d`: those not delivered before)."""
    if d is None:
        missing = lo - top - 1
        first = list(range(top + 1, min(lo, top + 1 + _EXAMPLE_IDS)))
    else:
        missing = d.count(0, top + 1, lo)
        first = []
        p = d.find(0, top + 1, lo)
        while p != -1 and len(first) < _EXAMPLE_IDS:
            first.append(p)
            p = d.find(0, p + 1, lo)
    add_anomaly(result, "poll_skip", {
        **who,
        "shard": shard,
        "after": index.rid(top),
        "next": index.rid(lo),
        "skipped": missing,
        "skipped_ids": [index.rid(p) for p in first],
        "op_index": op_index,
    })


def _nonmonotonic(
    result: Result,
    index: _Index,
    who: dict[str, Any],
    shard: Any,
    top: int,
    positions: list[int],
    op_index: int,
) -> None:
    add_anomaly(result, "nonmonotonic_poll", {
        **who,
        "shard": shard,
        "after": index.rid(top),
        "got": [index.rid(p) for p in positions[:_EXAMPLE_IDS]],
        "records": len(positions),
        "op_index": op_index,
    })


def _witness(
    index: _Index,
    observers: list[tuple[str, bytearray, bool]],
    ack_of: dict[int, int],
    position: int,
    acked: int,
) -> tuple[int, str] | None:
    """A higher record of the same shard, acknowledged later, seen by an observer that had
    to pass `position`: (its position, the observer), or None."""
    first, last = index.span[index.lists[position][0]]
    for name, seen, from_start in observers:
        if not from_start and seen.find(1, first, position) == -1:
            continue  # it never had a lower record of the shard: it may have started above
        q = seen.rfind(1, position + 1, last + 1)
        while q != -1:
            t = ack_of.get(q)
            if t is not None and t > acked:
                return q, name
            q = seen.rfind(1, position + 1, q)
    return None


def _unseen_series(
    members: dict[Any, list[int]],
    ok_t: list[int],
    seen_at: list[int] | np.ndarray,
    start: int,
    end: int,
    samples: int,
) -> tuple[dict[Any, list[tuple[float, int]]], dict[Any, int], dict[Any, int]]:
    """Per shard: acknowledged appends not yet seen, at `samples` evenly spaced times."""
    if not ok_t:
        return {}, {}, {}
    k = max(1, samples)
    step = (end - start) / k
    times = [start + round(step * i) for i in range(1, k + 1)] if end > start else [end]
    counted = _unseen_counts(ok_t, seen_at, times)
    if counted is None:
        # an append stops being unseen once it is both acknowledged and seen
        done = list(map(max, ok_t, seen_at))
    series: dict[Any, list[tuple[float, int]]] = {}
    peak: dict[Any, int] = {}
    final: dict[Any, int] = {}
    for s in _sorted(members):
        if counted is not None:
            counts = counted(members[s])
        else:
            acks = sorted(map(ok_t.__getitem__, members[s]))
            dones = sorted(map(done.__getitem__, members[s]))
            counts = [bisect_right(acks, t) - bisect_right(dones, t) for t in times]
        points = [(round((t - start) / NS_PER_S, 3), c)
                  for t, c in zip(times, counts, strict=True)]
        series[s] = points
        peak[s] = max(counts)
        final[s] = counts[-1]
    return series, peak, final


def _unseen_counts(
    ok_t: list[int], seen_at: list[int] | np.ndarray, times: list[Any]
) -> Callable[[list[int]], list[int]] | None:
    """What `_unseen_series` counts for one shard's appends, by numpy (a sort and a search
    per shard, not a sort of Python ints), where every time is an int of 64 bits; else
    None."""
    if not set(map(type, times)) <= {int}:
        return None
    try:
        acked, seen, at = np.array(ok_t), np.asarray(seen_at), np.array(times)
    except OverflowError:
        return None
    if not acked.dtype == seen.dtype == at.dtype == np.int64:
        return None
    done = np.maximum(acked, seen)  # unseen until both acknowledged and seen

    def counts(mine: list[int]) -> list[int]:
        m = np.array(mine, dtype=np.int64)
        return (np.searchsorted(np.sort(acked[m]), at, "right")  # type: ignore[no-any-return]
                - np.searchsorted(np.sort(done[m]), at, "right")).tolist()

    return counts
