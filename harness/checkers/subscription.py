"""Subscription delivery checker (StreamingFetch semantics).

Reads `subscribe`, `append`, `fetch`, `ack`, `consume` and `drain` ops (shapes in
harness.history). A record is identified by its record id, else its payload id. Per
subscription:

* **undelivered**: an append to the subscription's stream, acknowledged before the
  subscription's drain began (a `drain` op, or a `fetch` with `"final": true`, naming the
  subscription), that no consumer of the subscription ever received. For a subscription
  created with offset "latest", only appends invoked after it was created count. Without a
  drain the cut-off is the end of the history and undelivered appends make the verdict
  "unknown" rather than False (the run may just have stopped early).
* **not_redelivered**: a record delivered and not acknowledged within the ack timeout
  (plus `slack_s`, the server's expiry timer granularity) must be delivered again, to
  some consumer, before anyone acknowledges it, as long as the subscription still had
  activity (a fetch, ack or consumer event) after the deadline. The ack timeout comes from
  the `subscribe` op (`ack_timeout_s`) or the `ack_timeout_s` option; without either this
  rule is skipped (noted). Late redeliveries are measured, not judged:
  `redelivery_delay_s` is how long after its deadline each redelivery came.
* **acked_redelivered**: a record delivered again more than `grace_s` after an ack that
  certainly went out (the ack op completed `ok`) from a consumer that then stayed open for
  at least `grace_s` (its `consume` op had not completed, or no lifetime was recorded).
  An ack from a consumer that died right after may never have reached the server, and a
  redelivery already in flight when the ack was sent is inside the grace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import compress, filterfalse, repeat
from operator import add, is_not, itemgetter, le, not_
from typing import Any, cast

import numpy as np

from harness.checkers.columns import Columns, PayloadIds, columns_of
from harness.checkers.result import NS_PER_S, Result, add_anomaly, quantiles, without_gc
from harness.checkers.table import OK, Appends, Reads, ack_rows, distinct, table_of
from harness.history import History, Op, as_ops

NAME = "subscription"
_SEQUENCES = (list, tuple)
# A delivered or acknowledged record of a subscription is one flat tuple: (subscription,
# shard, batch, index) for a record id, (subscription, "payload", payload id) without one.
_PAYLOAD = "payload"
_ODD = object()  # an ack's record id that is neither: it can match no delivery


def _record_key(sub: Any, rec: Any) -> tuple[Any, ...]:
    rid = rec.get("record_id")
    if isinstance(rid, _SEQUENCES) and len(rid) == 3:
        return (sub, rid[0], rid[1], rid[2])
    return (sub, _PAYLOAD, rec.get("payload_id"))


def _ack_key(sub: Any, r: Any) -> tuple[Any, ...]:
    if isinstance(r, _SEQUENCES) and len(r) == 3:
        return (sub, r[0], r[1], r[2])
    if type(r) is tuple and len(r) == 2 and r[0] == _PAYLOAD:
        return (sub, _PAYLOAD, r[1])
    return (sub, _ODD, r)


@without_gc
def check(
    history: History | Iterable[Op],
    *,
    ack_timeout_s: float | None = None,
    slack_s: float | None = None,
    grace_s: float = 1.0,
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Judge subscription delivery; see the module docstring.

    `slack_s` defaults to max(1 s, ack timeout): servers scan for expired records on a timer.
    """
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = Result(valid=True, checker=NAME)
    fold = _Fold()
    delays: list[float] | None = None
    try:
        fold.run(ops, in_bulk=True)
    except _NotInBulk:
        fold = _Fold()
        fold.run(ops)
    if fold.bulk is not None:
        undelivered_soft = _judge_delivery(fold, result)
        delays = _judge_redelivery(fold, result, ack_timeout_s, slack_s, grace_s)
        if delays is None:  # a record delivered once may be an anomaly: judge each
            result = Result(valid=True, checker=NAME)
            fold = _Fold()
            fold.run(ops)
    if delays is None:
        undelivered_soft = _judge_delivery(fold, result)
        delays = _judge_redelivery(fold, result, ack_timeout_s, slack_s, grace_s)
        assert delays is not None

    for kind in ("undelivered", "not_redelivered", "acked_redelivered"):
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    if fold.bulk is not None:
        delivered, redeliveries, acked = fold.bulk.counts()
    else:
        delivered, acked = len(fold.first_delivery), len(fold.first_ack)
        redeliveries = sum(map(len, fold.more_deliveries.values()))
    result.counts.update(
        subscriptions=len(fold.subs),
        records_delivered=delivered,
        redeliveries=redeliveries,
        acked_records=acked,
    )
    result.figures["redelivery_delay_s"] = quantiles(delays)
    if result.counts["undelivered"] or result.counts["not_redelivered"]:
        result.valid = False
    elif result.counts["acked_redelivered"]:
        result.valid = False
    elif undelivered_soft:
        result.valid = "unknown"
    return result


class _Fold:
    """One pass over the history: appends, subscriptions, deliveries, acks, lifetimes."""

    def __init__(self) -> None:
        self.subs: dict[Any, dict[str, Any]] = {}
        # acknowledged appends, as columns: stream or None, payload id, record id as a
        # (shard, batch, index) or ("payload", payload id) tuple, invoke time, ack time
        self.app_streams: list[Any] = []
        self.app_pids: list[Any] = []
        self.app_rkeys: list[tuple[Any, ...]] = []
        self.app_began: list[int] = []
        self.app_acked: list[int] = []
        # record key -> its first delivery (time, consumer); later ones; per subscription,
        # the first-delivered keys and their times in order, and the payload ids delivered
        self.first_delivery: dict[tuple[Any, ...], tuple[int, Any]] = {}
        self.more_deliveries: dict[tuple[Any, ...], list[tuple[int, Any]]] = {}
        self.sub_keys: dict[Any, list[tuple[Any, ...]]] = {}
        self.sub_times: dict[Any, list[int]] = {}
        self.delivered_pids: dict[Any, set[Any]] = {}
        # record key -> earliest ack time of any kind; earliest certain ack (time, consumer)
        self.first_ack: dict[tuple[Any, ...], int] = {}
        self.certain_ack: dict[tuple[Any, ...], tuple[int, Any]] = {}
        self.consumer_end: dict[tuple[Any, Any], int] = {}
        self.drain_at: dict[Any, int] = {}
        self.last_activity: dict[Any, int] = {}
        self.end = 0
        # Where the appends were taken in bulk (fold_appends): the shared append columns
        # and the acknowledged ones among them, with when each was invoked; the delivered
        # payload ids are then kept as the shared dense ids of `registry`.
        self.appends: Appends | None = None
        self.oks: np.ndarray | None = None
        self.oks_began: np.ndarray | None = None
        self.registry: PayloadIds | None = None
        # In bulk (run(in_bulk=True)): the fetches' records and the acks are kept as they
        # come and judged together after the walk (_Bulk); the dicts above then hold only
        # the records delivered more than once.
        self.bulk: _Bulk | None = None

    def delivered(self, key: tuple[Any, ...]) -> bool:
        """Whether the record `key` (subscription first) was ever delivered."""
        if self.bulk is not None:
            return self.bulk.delivered(key)
        return key in self.first_delivery

    def fold_appends(self, appends: Appends) -> bool:
        """The acknowledged appends from the shared append columns, for the usual history:
        each payload id invoked once and completed at most once, after it, by the same
        process (so an ack's invocation is the one `run` would pair it with). False
        (nothing changed) for any other."""
        pairing = appends.pairing()
        if pairing is None:
            return False
        types, ids = appends.types, appends.pids
        self.appends = appends
        self.registry = appends.registry
        self.oks = np.flatnonzero(types == OK)
        self.oks_began = appends.times[pairing.opened_at[ids[self.oks]]]
        return True

    def undelivered(self, sub: Any) -> Iterator[tuple[Any, Any, int, tuple[Any, ...], int]]:
        """The acknowledged appends whose payload id was never delivered to `sub`: (payload
        id, stream, invoke time, record key, ack time) of each, in ack order."""
        delivered = self.delivered_pids.get(sub, set())
        if self.appends is None or self.oks is None or self.oks_began is None:
            for i in _not_in(delivered, self.app_pids):
                yield (self.app_pids[i], self.app_streams[i], self.app_began[i],
                       self.app_rkeys[i], self.app_acked[i])
            return
        appends = self.appends
        ids = appends.pids[self.oks]
        was = np.zeros(len(appends.registry.pids) + 1, dtype=bool)
        was[np.fromiter(delivered, np.int64, len(delivered))] = True
        null = appends.registry.index.get(None)  # a payload id None is never delivered
        if null is not None:
            was[null] = False
        missing = np.flatnonzero(~was[ids])
        values = appends.values(self.oks[missing])
        for k, v in zip(missing.tolist(), values, strict=True):
            pid = appends.registry.pids[int(ids[k])]
            rid = appends.rids[k]
            if isinstance(rid, _SEQUENCES) and len(rid) == 3:
                rkey: tuple[Any, ...] = (rid[0], rid[1], rid[2])
            else:
                rkey = (_PAYLOAD, pid)
            yield (pid, v.get("stream"), int(self.oks_began[k]), rkey,
                   int(appends.times[self.oks[k]]))

    def run(self, ops: list[Op], in_bulk: bool = False) -> None:
        """The walk; `in_bulk`: the fetches' records and the acks judged together after it
        (_Bulk), or _NotInBulk where that cannot be done (nothing is then kept)."""
        self.end = ops[-1].time if ops else 0
        table = table_of(ops)
        appends = table.appends if table is not None else None
        walked: Iterable[Op] = ops
        if table is not None and appends is not None and self.fold_appends(appends):
            walked = map(ops.__getitem__, table.without("append"))
            reads = table.reads if in_bulk else None
            if reads is not None and reads.rows is not None and reads.ids is not None:
                self.bulk = _Bulk(ops, reads)
        if in_bulk and self.bulk is None:
            raise _NotInBulk
        bulk = self.bulk
        append_invoked: dict[tuple[Any, Any], int] = {}
        open_acks: dict[Any, list[tuple[int, Any, Any, list[tuple[Any, ...]]]]] = {}
        subs, last_activity = self.subs, self.last_activity
        streams, pids, rkeys = self.app_streams, self.app_pids, self.app_rkeys
        began_at, acked_at = self.app_began, self.app_acked
        for op in walked:
            v = op.value
            if type(v) is not dict and not isinstance(v, dict):
                continue
            f = op.f
            t = op.time
            if f == "append":
                pid = v.get("payload_id")
                if op.type == "invoke":
                    append_invoked[(op.process, pid)] = t
                elif op.type == "ok":
                    began = append_invoked.pop((op.process, pid), t)
                    rid = v.get("record_id")
                    if isinstance(rid, _SEQUENCES) and len(rid) == 3:
                        rkey: tuple[Any, ...] = (rid[0], rid[1], rid[2])
                    else:
                        rkey = (_PAYLOAD, pid)
                    streams.append(v.get("stream"))
                    pids.append(pid)
                    rkeys.append(rkey)
                    began_at.append(began)
                    acked_at.append(t)
                else:
                    append_invoked.pop((op.process, pid), None)
            elif f == "fetch":
                if op.type != "invoke":
                    self.fetched(op, v, t)
            elif f == "ack":
                sub = v.get("subscription", "")
                last_activity[sub] = t
                consumer = v.get("consumer", op.process)
                if bulk is not None:
                    bulk.ack(op, v, sub, t, consumer, open_acks)
                    continue
                if op.type == "invoke":
                    keys = _ack_keys(sub, v.get("record_ids"))
                    self._first_ack(keys, t)
                    open_acks.setdefault(op.process, []).append((t, sub, consumer, keys))
                    continue
                pending = open_acks.get(op.process)
                if pending:
                    # its invocation already gave these records their earliest ack
                    sent_t, _, sent_consumer, sent_keys = pending.pop(0)
                else:
                    sent_t, sent_consumer = t, consumer
                    sent_keys = _ack_keys(sub, v.get("record_ids"))
                    self._first_ack(sent_keys, sent_t)
                if op.type == "ok":
                    certain = self.certain_ack
                    certain.update(
                        dict.fromkeys(
                            filterfalse(certain.__contains__, sent_keys), (sent_t, sent_consumer)
                        )
                    )
            elif f == "subscribe" and op.type == "ok":
                sub = v.get("subscription", "")
                subs[sub] = {
                    "stream": v.get("stream"),
                    # The driver protocol names it ack_timeout (seconds, as ackTimeoutSeconds).
                    "ack_timeout_s": v.get("ack_timeout_s", v.get("ack_timeout")),
                    "offset": str(v.get("offset", "earliest")).lower(),
                    "created": t,
                }
            elif f == "consume" and op.type != "invoke":
                sub = v.get("subscription", "")
                last_activity[sub] = t
                self.consumer_end[(sub, v.get("consumer", op.process))] = t
            elif f == "drain" and op.type == "invoke":
                self.drain_at[v.get("subscription", "")] = t
        if bulk is not None:
            bulk.settle(self)

    def _first_ack(self, keys: list[tuple[Any, ...]], t: int) -> None:
        first = self.first_ack
        first.update(dict.fromkeys(filterfalse(first.__contains__, keys), t))

    def fetched(self, op: Op, v: dict[str, Any], t: int) -> None:
        sub = v.get("subscription", "")
        self.subs.setdefault(sub, {})
        self.last_activity[sub] = t
        if v.get("final"):
            self.drain_at[sub] = min(self.drain_at.get(sub, t), t)
        default_consumer = v.get("consumer", op.process)
        pids = self.delivered_pids.setdefault(sub, set())
        records = v.get("records") or ()
        if self.bulk is not None:
            if records:
                self.bulk.fetched(op, sub, t, default_consumer)
            return
        first = self.first_delivery
        columns = columns_of(records)
        keys = _delivered_keys(sub, columns)
        if keys is not None and columns is not None:
            # The consumer column is shared with the other checkers. It says None both for
            # a record without a consumer (the op's got it) and for one naming None:
            # dict.get tells the two apart.
            consumers = set(columns.consumers)
            if None in consumers:
                consumers = set(
                    map(dict.get, records, repeat("consumer"), repeat(default_consumer))
                )
            if len(consumers) == 1 and not any(map(first.__contains__, keys)):
                # New records for one consumer, the usual fetch: in C.
                (consumer,) = consumers
                known = len(first)
                first.update(zip(keys, repeat((t, consumer))))
                if len(first) - known == len(keys):
                    self.sub_keys.setdefault(sub, []).extend(keys)
                    self.sub_times.setdefault(sub, []).extend(repeat(t, len(keys)))
                    if self.registry is not None:
                        ids = columns.ids(self.registry)
                        if ids is None:
                            raise TypeError("an unhashable payload id")
                        pids.update(ids)  # None's id is left out when judging
                    else:
                        pids.update(columns.pids)
                        pids.discard(None)
                    return
                for key in keys:  # a record twice in one fetch: undo, go record by record
                    first.pop(key, None)
        for rec in records:
            if not isinstance(rec, dict):
                continue
            key = _record_key(sub, rec)
            delivery = (t, rec.get("consumer", default_consumer))
            if key in first:
                self.more_deliveries.setdefault(key, []).append(delivery)
            else:
                first[key] = delivery
                self.sub_keys.setdefault(sub, []).append(key)
                self.sub_times.setdefault(sub, []).append(t)
            pid = rec.get("payload_id")
            if pid is not None:
                if self.registry is not None:
                    (k,) = self.registry.of([pid]) or (pid,)
                    pids.add(k)
                else:
                    pids.add(pid)


class _NotInBulk(Exception):
    """The fetches or acks are not what the bulk fold takes: walk them one by one."""


class _Bulk:
    """The fetches' records and the acks of a history, kept as the walk meets them and
    judged together after it: each record key (subscription, shard, batch, index) gets a
    dense number, and its first delivery, deliveries, first ack and first certain ack are
    found by numpy over every record at once; only the records delivered more than once
    are put in the fold's dicts, for `_judge_record`. Takes the fetches whose records are
    columns of the shared table (harness.checkers.table.Reads) and acks whose record ids
    are lists of three ints; anything else is _NotInBulk."""

    def __init__(self, ops: list[Op], reads: Reads) -> None:
        self.ops = ops
        self.reads = reads
        self.number = {id(ops[i]): k for k, i in enumerate(reads.positions)}
        # per fetch with records: its number in `reads`, subscription, time, the consumer
        # of a record that names none
        self.fetches: list[int] = []
        self.fetch_subs: list[Any] = []
        self.fetch_times: list[Any] = []
        self.fetch_consumers: list[Any] = []
        # per ack event: (gives a first ack, gives a certain ack, subscription, time,
        # consumer, record ids)
        self.acks: list[tuple[bool, bool, Any, Any, Any, Any]] = []
        self.sub_code: dict[Any, int] = {}
        self._delivered: set[tuple[Any, ...]] | None = None
        self.counted = (0, 0, 0)

    def fetched(self, op: Op, sub: Any, t: int, default_consumer: Any) -> None:
        k = self.number.get(id(op))
        if k is None:
            raise _NotInBulk
        self.fetches.append(k)
        self.fetch_subs.append(sub)
        self.fetch_times.append(t)
        self.fetch_consumers.append(default_consumer)

    def ack(self, op: Op, v: dict[str, Any], sub: Any, t: int, consumer: Any,
            open_acks: dict[Any, list[Any]]) -> None:
        """What `run` does with an ack op, kept for `settle`."""
        if op.type == "invoke":
            raw = v.get("record_ids")
            self.acks.append((True, False, sub, t, consumer, raw))
            open_acks.setdefault(op.process, []).append((t, sub, consumer, raw))
            return
        pending = open_acks.get(op.process)
        if pending:  # its invocation already gave these records their earliest ack
            sent_t, sent_sub, sent_consumer, raw = pending.pop(0)
            first = False
        else:
            sent_t, sent_sub, sent_consumer, raw = t, sub, consumer, v.get("record_ids")
            first = True
        if first or op.type == "ok":
            self.acks.append((first, op.type == "ok", sent_sub, sent_t, sent_consumer, raw))

    def _codes(self, subs: list[Any]) -> np.ndarray:
        code = self.sub_code
        return np.fromiter((code.setdefault(sub, len(code)) for sub in subs), np.int64,
                           len(subs))

    def settle(self, fold: _Fold) -> None:
        reads = self.reads
        raws = [a[5] for a in self.acks]
        if any(raw and type(raw) is not list for raw in raws):
            raise _NotInBulk
        times = [*self.fetch_times, *(a[3] for a in self.acks)]
        if not set(map(type, times)) <= {int} or (times and not
                                                 -(1 << 62) < min(times) <= max(times) < 1 << 62):
            raise _NotInBulk
        a_rows = ack_rows(self.ops, raws)
        if a_rows is None:
            raise _NotInBulk
        # the deliveries: every record of each fetch, in history order
        nums = np.array(self.fetches, dtype=np.int64)
        starts = reads.starts[nums]
        lengths = reads.starts[nums + 1] - starts
        n_d = int(lengths.sum())
        at = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(n_d)
        assert reads.rows is not None and reads.ids is not None
        d_rows, d_ids = reads.rows[at], reads.ids[at]
        d_fetch = np.repeat(np.arange(len(nums)), lengths)
        d_sub = np.repeat(self._codes(self.fetch_subs), lengths)
        d_t = np.repeat(np.array(self.fetch_times, dtype=np.int64), lengths)
        # the acks' records, in the order the walk met them
        a_len = np.fromiter((len(raw) if raw else 0 for raw in raws), np.int64, len(raws))
        a_event = np.repeat(np.arange(len(raws)), a_len)
        a_sub = np.repeat(self._codes([a[2] for a in self.acks]), a_len)
        a_t = np.repeat(np.array([a[3] for a in self.acks], dtype=np.int64), a_len)
        n_a = len(a_event)
        # one number per record key
        subs = np.concatenate((d_sub, a_sub))
        rows = np.concatenate((d_rows, a_rows))
        by_key = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0], subs))
        ordered, ordered_subs = rows[by_key], subs[by_key]
        fresh = np.ones(len(by_key), dtype=bool)
        fresh[1:] = (ordered_subs[1:] != ordered_subs[:-1]) | (
            ordered[1:] != ordered[:-1]).any(axis=1)
        number = np.empty(len(by_key), dtype=np.int64)
        number[by_key] = np.cumsum(fresh) - 1
        n_keys = int(fresh.sum())
        self.key_sub = ordered_subs[fresh]
        d_key, a_key = number[:n_d], number[n_d:]
        self.first_d = first_d = np.full(n_keys, n_d, dtype=np.int64)
        np.minimum.at(first_d, d_key, np.arange(n_d))
        self.count_d = count_d = np.bincount(d_key, minlength=n_keys)
        gives_first = np.array([a[0] for a in self.acks], dtype=bool)[a_event]
        gives_certain = np.array([a[1] for a in self.acks], dtype=bool)[a_event]
        self.first_a = first_a = np.full(n_keys, n_a, dtype=np.int64)
        got = np.flatnonzero(gives_first)
        np.minimum.at(first_a, a_key[got], got)
        self.first_c = first_c = np.full(n_keys, n_a, dtype=np.int64)
        got = np.flatnonzero(gives_certain)
        np.minimum.at(first_c, a_key[got], got)
        self.d_t, self.a_t, self.n_d, self.n_a = d_t, a_t, n_d, n_a
        self.d_rows, self.d_sub = d_rows, d_sub
        delivered = int(np.count_nonzero(count_d))
        self.counted = (delivered, n_d - delivered, int(np.count_nonzero(first_a < n_a)))

        names = list(self.sub_code)
        for code in distinct(d_sub).tolist():
            fold.delivered_pids[names[code]].update(d_ids[d_sub == code].tolist())
        if n_d:  # subscriptions in the order of their first delivery
            fold.sub_keys.update((names[c], []) for c in d_sub[np.sort(
                np.unique(d_sub, return_index=True)[1])].tolist())
        # the records delivered more than once, in the order first delivered
        again = np.flatnonzero(count_d > 1)
        again = again[np.argsort(first_d[again], kind="stable")]
        deliveries: dict[int, list[tuple[int, Any]]] = {k: [] for k in again.tolist()}
        columns = reads.columns
        for i in np.flatnonzero(count_d[d_key] > 1).tolist():
            j = int(d_fetch[i])
            rec = columns[self.fetches[j]].records[int(at[i] - starts[j])]
            deliveries[int(d_key[i])].append(
                (self.fetch_times[j], rec.get("consumer", self.fetch_consumers[j])))
        acks = self.acks
        for k, ds in deliveries.items():
            shard, batch, index = d_rows[first_d[k]].tolist()
            key = (names[int(self.key_sub[k])], shard, batch, index)
            fold.first_delivery[key] = ds[0]
            fold.more_deliveries[key] = ds[1:]
            if first_a[k] < n_a:
                fold.first_ack[key] = int(a_t[first_a[k]])
            if first_c[k] < n_a:
                fold.certain_ack[key] = (int(a_t[first_c[k]]), acks[int(a_event[first_c[k]])][4])

    def counts(self) -> tuple[int, int, int]:
        """Records delivered, redeliveries, records acknowledged."""
        return self.counted

    def delivered(self, key: tuple[Any, ...]) -> bool:
        if self._delivered is None:
            names = list(self.sub_code)
            subs = [names[c] for c in self.d_sub.tolist()]
            self._delivered = set(zip(subs, *self.d_rows.T.tolist(), strict=True))
        return key in self._delivered

    def single_deliveries_fine(
        self, fold: _Fold, sub: Any, limit: tuple[int, int] | None, grace: int
    ) -> bool:
        """`_single_deliveries_fine`, for every record of `sub` at once."""
        code = self.sub_code.get(sub)
        if code is None:
            return True
        once = np.flatnonzero((self.count_d == 1) & (self.key_sub == code))
        if not len(once):
            return True
        times = self.d_t[self.first_d[once]]
        n_a = self.n_a
        if limit is not None:
            timeout, slack = limit
            idle = fold.last_activity.get(sub, fold.end)
            if int(times.min()) + timeout + slack < idle:
                first_a = self.first_a[once]
                acked = np.where(first_a < n_a, self.a_t[np.minimum(first_a, n_a - 1)]
                                 if n_a else 0, fold.end)
                if not np.all(np.minimum(acked, idle) <= times + (timeout + slack)):
                    return False
        first_c = self.first_c[once]
        certain = first_c < n_a
        return bool(np.all(times[certain] <= self.a_t[first_c[certain]] + grace))


def _delivered_keys(sub: Any, columns: Columns | None) -> list[tuple[Any, ...]] | None:
    """The keys of a fetch's records (`columns_of` them) when every one is a dict with a
    (shard, batch, index) list."""
    if columns is None:
        return None
    raws: list[Any] = columns.rids
    if set(map(type, raws)) != {list} or set(map(len, raws)) != {3}:
        return None
    # one tuple per record, built at once (twice as fast as joining two tuples)
    return [(sub, r[0], r[1], r[2]) for r in raws]


def _ack_keys(sub: Any, raw: Any) -> list[tuple[Any, ...]]:
    rids = raw or ()
    if type(rids) is list and rids and set(map(type, rids)) == {list} and (
        set(map(len, rids)) == {3}
    ):
        return [(sub, r[0], r[1], r[2]) for r in rids]
    return [_ack_key(sub, r) for r in rids]


def _judge_delivery(fold: _Fold, result: Result) -> int:
    """1. every acknowledged append delivered to some consumer; returns how many were not
    when no drain marks the end of the run."""
    undelivered_soft = 0
    for sub, info in fold.subs.items():
        stream = info.get("stream")
        latest = info.get("offset") == "latest"
        created = info.get("created", 0)
        cutoff = fold.drain_at.get(sub)
        # Only an append whose payload id was never delivered can be missing.
        for pid, a_stream, began, rkey, acked in fold.undelivered(sub):
            if stream is not None and a_stream is not None and a_stream != stream:
                continue
            if latest and began < created:
                continue
            if fold.delivered((sub, *rkey)):
                continue
            example = {"subscription": sub, "payload_id": pid, "record_id": _as_list(rkey)}
            if cutoff is None:
                undelivered_soft += 1
                soft = result.anomalies.setdefault("undelivered_without_drain", [])
                if len(soft) < 100:
                    soft.append(example)
            elif acked < cutoff:
                add_anomaly(result, "undelivered", example)
    if undelivered_soft:
        result.counts["undelivered_without_drain"] = undelivered_soft
        result.notes.append(
            f"{undelivered_soft} acknowledged appends were never delivered and no drain op "
            "marks the end of the run: record a drain to judge them"
        )
    return undelivered_soft


def _not_in(present: set[Any], items: list[Any]) -> list[int]:
    """Positions of the items not in `present`, in order."""
    missing = list(map(present.__contains__, items))
    if all(missing):
        return []
    return [i for i, found in enumerate(missing) if not found]

def _as_list(rkey: Any) -> Any:
    if isinstance(rkey, tuple) and rkey and rkey[0] == "payload":
        return None
    return list(rkey) if isinstance(rkey, tuple) else rkey


def _judge_redelivery(
    fold: _Fold,
    result: Result,
    ack_timeout_s: float | None,
    slack_s: float | None,
    grace_s: float,
) -> list[float] | None:
    """2 and 3: redelivery after the ack timeout, no redelivery after an ack. Returns the
    redelivery delays (s). Records delivered once are judged together in C when none of
    them can be an anomaly (the usual case); otherwise every record is judged in turn
    (None, nothing judged, where the fold was taken in bulk: it must be walked again)."""
    grace = int(grace_s * NS_PER_S)
    limits: dict[Any, tuple[int, int] | None] = {}  # sub -> (timeout, slack) in ns
    skipped_timeout: set[Any] = set()
    for sub in fold.sub_keys:
        timeout_s = fold.subs.get(sub, {}).get("ack_timeout_s") or ack_timeout_s
        if timeout_s is None:
            skipped_timeout.add(sub)
            limits[sub] = None
        else:
            slack_for = slack_s if slack_s is not None else max(1.0, float(timeout_s))
            limits[sub] = (int(float(timeout_s) * NS_PER_S), int(slack_for * NS_PER_S))
    first, more = fold.first_delivery, fold.more_deliveries
    delays: list[float] = []
    if fold.bulk is not None:
        if not all(fold.bulk.single_deliveries_fine(fold, sub, limits[sub], grace)
                   for sub in fold.sub_keys):
            return None
        keys: Iterable[tuple[Any, ...]] = first  # (in bulk: only those delivered again)
    elif all(_single_deliveries_fine(fold, sub, limits[sub], grace) for sub in fold.sub_keys):
        keys = filter(more.__contains__, first) if more else ()
    else:
        keys = first
    for key in keys:
        _judge_record(fold, result, key, limits[key[0]], grace, delays)
    if skipped_timeout:
        result.notes.append(
            "ack timeout unknown for subscription(s) "
            f"{sorted(map(str, skipped_timeout))}: redelivery not judged "
            "(record it in the subscribe op or pass ack_timeout_s)"
        )
    return delays


def _single_deliveries_fine(
    fold: _Fold, sub: Any, limit: tuple[int, int] | None, grace: int
) -> bool:
    """Whether no record of `sub` delivered exactly once can be an anomaly: acknowledged
    (or the subscription idle) by its deadline plus slack, and never delivered after a
    certain ack plus the grace."""
    keys, times = fold.sub_keys[sub], fold.sub_times[sub]
    more = fold.more_deliveries
    if more:
        once = list(map(not_, map(more.__contains__, keys)))
        keys, times = list(compress(keys, once)), list(compress(times, once))
    if not keys:
        return True
    if limit is not None:
        timeout, slack = limit
        idle = fold.last_activity.get(sub, fold.end)
        if min(times) + timeout + slack < idle:
            acks: list[int] = list(map(fold.first_ack.get, keys, repeat(fold.end)))
            ends = map(min, acks, repeat(idle))
            if not all(map(le, ends, map(add, times, repeat(timeout + slack)))):
                return False
    found = list(map(fold.certain_ack.get, keys))
    if None in found:
        present = list(map(is_not, found, repeat(None)))
        found, times = list(compress(found, present)), list(compress(times, present))
    certain = cast(list[tuple[int, Any]], found)
    acked = map(itemgetter(0), certain)
    return all(map(le, times, map(add, acked, repeat(grace))))


def _judge_record(
    fold: _Fold,
    result: Result,
    key: tuple[Any, ...],
    limit: tuple[int, int] | None,
    grace: int,
    delays: list[float],
) -> None:
    """One record's deliveries: redelivered after its deadline, not after a certain ack."""
    sub = key[0]
    ds = [fold.first_delivery[key], *fold.more_deliveries.get(key, ())]
    ack_time = fold.first_ack.get(key)
    end = fold.end
    if limit is not None:
        timeout, slack = limit
        for i, (t_d, consumer) in enumerate(ds):
            deadline = t_d + timeout
            unacked_at_deadline = ack_time is None or ack_time > deadline
            if i + 1 < len(ds):
                if unacked_at_deadline:
                    delays.append(max(0, ds[i + 1][0] - deadline) / NS_PER_S)
                continue
            if ack_time is not None and ack_time <= deadline + slack:
                break
            window_end = min(
                ack_time if ack_time is not None else end, fold.last_activity.get(sub, end)
            )
            if window_end > deadline + slack:
                add_anomaly(
                    result,
                    "not_redelivered",
                    {
                        "subscription": sub,
                        "record_id": _as_list(key[1:]),
                        "delivered_to": consumer,
                        "delivered_at_s": t_d / NS_PER_S,
                        "acked_at_s": ack_time / NS_PER_S if ack_time is not None else None,
                        "deadline_s": deadline / NS_PER_S,
                    },
                )
    ca = fold.certain_ack.get(key)
    if ca is None:
        return
    t_a, acker = ca
    died = fold.consumer_end.get((sub, acker))
    if died is not None and died < t_a + grace:
        return
    for t_d, consumer in ds:
        if t_d > t_a + grace:
            add_anomaly(
                result,
                "acked_redelivered",
                {
                    "subscription": sub,
                    "record_id": _as_list(key[1:]),
                    "acked_by": acker,
                    "redelivered_to": consumer,
                    "after_ack_s": round((t_d - t_a) / NS_PER_S, 3),
                },
            )
            break
