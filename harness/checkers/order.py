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
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import chain, compress, count, islice, pairwise, repeat, starmap
from operator import and_, eq, gt, is_not, le, lt, ne, rshift
from typing import Any, cast

import numpy as np

from harness.checkers.columns import Columns, PayloadIds, columns_of
from harness.checkers.result import Result, add_anomaly, without_gc
from harness.checkers.table import OK, Appends, Reads, distinct, first_seen, table_of
from harness.history import READ_FS, History, Op, as_ops

NAME = "order"
_NONE = object()
_SEQUENCES = (list, tuple)
# An append's place in producer order, as one int: (producer and key id) << 40 | invocation.
_SHIFT = 40
_LOW = (1 << _SHIFT) - 1


class _Redo(Exception):
    """A read binds a record id that the appends taken in bulk bound otherwise."""


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
    fold = _Fold(result)
    try:
        fold.run(ops, read_fs)
    except _Redo:
        fold.release()
        result = Result(valid=True, checker=NAME)
        fold = _Fold(result)
        fold.walk(ops, read_fs)
    _judge_key_order(fold, result)

    for kind in ("shard_order", "key_order", "append_order", "record_id_conflict"):
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    result.counts.update(
        records_checked=fold.checked_records,
        redeliveries=fold.redeliveries,
        reader_sequences=len(fold.first_seen),
        acknowledged=fold.acknowledged(),
    )
    fold.release()
    if any(result.counts[k] for k in result.anomalies):
        result.valid = False
    return result


class _Fold:
    """One pass: producer order and acks, record id bindings, reader sequences.

    A read completion goes record by record (`read_records`) unless it is *clean*: every
    record a dict whose payload id is bound, both ways, to its very record id already, in
    strictly increasing record id order, for one reader (and, for a reader's running
    sequence, of one shard, continuing where the reader left it). A clean read changes
    the state exactly as the record-by-record pass would and raises nothing, in a few
    passes in C.
    """

    def __init__(self, result: Result) -> None:
        self.result = result
        # payload id -> its place in producer order (see _SHIFT), from its last invocation
        self.order: dict[Any, int] = {}
        self.producer_keys: dict[tuple[Any, Any], int] = {}
        self.acked: set[Any] = set()
        self.maybe_unacked: set[Any] = set()  # an append of it completed other than ok
        # a payload appended more than once (a retry) may legitimately live under two ids
        self.retried: set[Any] = set()
        # appends in flight: payload id -> (producer, invoke index, highest batches then);
        # the same payload id in flight from another producer too: (producer, payload id) ->
        # the same triple
        self.open_append: dict[Any, tuple[Any, int, dict[Any, Any]]] = {}
        self.open_elsewhere: dict[tuple[Any, Any], tuple[Any, int, dict[Any, Any]]] = {}
        # shard -> op indexes of append completions (increasing) and the running max batch
        self.done: dict[Any, tuple[list[int], list[int]]] = {}
        # record id -> payload id; payload id -> record id (a list: what records carry)
        self.rid_payload: MutableMapping[tuple[Any, ...], Any] = {}
        self.payload_rid: MutableMapping[Any, list[Any]] = {}
        # running readers: reader -> shard -> record ids it saw first in order (increasing);
        # reader -> record ids it saw first out of order
        self.runs: dict[Any, dict[Any, list[Any]]] = {}
        self.out_of_order: dict[Any, set[tuple[Any, ...]]] = {}
        # reader sequence (per reader, across shards) -> payload ids seen first, in order
        # (as consecutive chunks); the sequences not *clean*: not every payload id in it came
        # in increasing record id order of its shard under the record id it is bound to
        self.first_seen: dict[Any, list[Iterable[Any]]] = {}
        self.unclean: set[Any] = set()
        self.complete_readers: set[Any] = set()
        self.redeliveries = 0
        self.checked_records = 0
        # the appends were taken in bulk (fold_appends): a read that binds a record id
        # otherwise must start over op by op (_Redo), where it came before the append
        self.bulk = False
        # (bulk only) the shared dense payload ids, and payload_rid indexed by them; the
        # acknowledged appends' places in producer order and record ids, in ack order
        self.registry: PayloadIds | None = None
        self.rid_by_id: list[Any] = []
        self.ok_places: np.ndarray | None = None
        self.ok_rows: np.ndarray | None = None
        # (bulk only) the invoked payload ids (dense) and their places in producer order,
        # and the acknowledged payload ids: what `order` and `acked` are made of, when
        # first needed
        self.lazy: tuple[np.ndarray, np.ndarray] | None = None
        self.ok_pids: list[Any] | None = None

    def release(self) -> None:
        """Break the fold's one reference cycle (its bulk payload bindings refer back to
        it), so that its state, a million entries and more, is freed when `check` returns.
        Left in the cycle, it waited for the collector, which check_all pauses, and cost a
        collection after it (measured: check_all 6.3 -> 6.0 s CPU)."""
        self.payload_rid = {}

    def acknowledged(self) -> int:
        """How many payload ids were acknowledged."""
        return len(self.acked) if self.ok_pids is None else len(self.ok_pids)

    def run(self, ops: list[Op], read_fs: frozenset[str]) -> None:
        table = table_of(ops)
        appends = table.appends if table is not None else None
        if table is None or appends is None or not self.fold_appends(appends):
            self.walk(ops, read_fs)
            return
        reads = table.reads
        clean = self._clean_reads(reads, appends) if reads is not None else None
        if reads is None or clean is None:
            levels: list[int] = []
            unbound: dict[int, list[int]] = {}
            number: dict[int, int] = {}
        else:
            (levels, unbound), number = clean, reads.number
        for i in table.positions(read_fs):
            op = ops[i]
            v = op.value
            if op.type != "invoke" and (type(v) is dict or isinstance(v, dict)):
                k = number.get(i)
                if k is None:
                    self.read(op, v)
                else:
                    self.read(op, v, levels[k], unbound.get(k, ()))

    def _clean_reads(
        self, reads: Reads, appends: Appends
    ) -> tuple[list[int], dict[int, list[int]]] | None:
        """Per op of `reads`, in bulk: 0 when the record ids do not strictly increase or
        some record's payload id is bound by an acknowledged append to another record id;
        1 when they do and it is not (the records whose payload id no append bound, listed
        per op, are still to be looked at: an earlier read may have bound them); 2 when,
        besides, they are all of one shard. A read binding a record id changes no
        append's binding, so what is found here holds when the read's turn comes."""
        rows, ids, oks = reads.rows, reads.ids, appends.rid_array
        if rows is None or ids is None or oks is None or not len(rows):
            return None
        size = len(appends.registry.pids)
        bound_rows = np.zeros((size, 3), dtype=np.int64)
        bound = np.zeros(size, dtype=bool)
        ok_ids = appends.pids[appends.types == OK]
        bound_rows[ok_ids] = oks
        bound[ok_ids] = True
        has = bound[ids]
        good = ~has | (bound_rows[ids] == rows).all(axis=1)
        a, b = rows[:-1], rows[1:]
        later = (a[:, 0] < b[:, 0]) | (a[:, 0] == b[:, 0]) & (
            (a[:, 1] < b[:, 1]) | (a[:, 1] == b[:, 1]) & (a[:, 2] < b[:, 2]))
        starts = reads.starts[:-1]
        later[starts[1:] - 1] = True  # the pair across two ops is not compared
        good[1:] &= later
        firsts = np.repeat(rows[starts, 0], np.diff(reads.starts))
        level = np.add.reduceat((~good).astype(np.int64), starts) == 0
        one_shard = np.add.reduceat((rows[:, 0] != firsts).astype(np.int64), starts) == 0
        levels: list[int] = (level.astype(np.int64) * (1 + one_shard)).tolist()
        unbound: dict[int, list[int]] = {}
        loose = np.flatnonzero(~has)
        if len(loose):
            op_of = np.searchsorted(reads.starts, loose, side="right") - 1
            for k, i in zip(op_of.tolist(), (loose - reads.starts[op_of]).tolist(), strict=True):
                unbound.setdefault(k, []).append(i)
        return levels, unbound

    def fold_appends(self, appends: Appends) -> bool:
        """What `walk` makes of the append ops, in bulk from the shared append columns,
        for the usual history: op indexes increasing, each payload id invoked once and
        completed at most once, after it, by the same process, the acknowledged ones under
        distinct record ids, lists of three ints. False (nothing changed) for any other."""
        types, ids, processes = appends.types, appends.pids, appends.processes
        rids, rows = appends.rids, appends.rid_array
        null = appends.registry.index.get(None)
        if (
            rows is None
            or (len(rids) and set(map(type, rids)) != {list})
            or np.any(appends.indexes[1:] <= appends.indexes[:-1])
            or (null is not None and np.any(ids == null))
        ):
            return False
        pairing = appends.pairing()
        if pairing is None:
            return False
        invoked, completed, opened_at = pairing.invoked, pairing.completed, pairing.opened_at
        if len(rows) > 1:
            by_rid = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
            sorted_rows = rows[by_rid]
            if np.any(np.all(sorted_rows[1:] == sorted_rows[:-1], axis=1)):
                return False  # one record id acknowledged twice: the walk says how
        pid_of = appends.registry.pids.__getitem__
        try:
            keys = appends.invoke_keys  # (pairing.invoked: every invocation, in order)
            key_ids = dict.fromkeys(keys)
        except TypeError:  # an unhashable key
            return False
        key_id = np.array(list(map(dict(zip(key_ids, count())).__getitem__, keys)),
                          dtype=np.int64)
        # producer keys (process, key) numbered in the order first invoked
        pairs = processes[invoked] * max(1, len(key_ids)) + key_id
        pk_ids, firsts = first_seen(pairs)
        names = appends.process_names
        self.producer_keys = {
            (names[int(processes[invoked[k]])], keys[k]): n
            for n, k in enumerate(firsts.tolist())
        }
        places = (pk_ids << _SHIFT) | np.arange(len(invoked), dtype=np.int64)
        # The order and the acknowledged set by payload id are built only if a reader
        # sequence needs them (_key_order_places): a million-entry table each.
        self.lazy = (ids[invoked], places)
        oks = np.flatnonzero(types == OK)
        ok_pids = list(map(pid_of, ids[oks].tolist()))
        self.ok_pids = ok_pids
        self.maybe_unacked = set(map(pid_of, ids[completed[types[completed] != OK]].tolist()))
        left_open = np.ones(len(appends.registry.pids), dtype=bool)
        left_open[ids[completed]] = False
        # (only the payload ids left open count, in _judge_key_order)
        self.open_append = dict.fromkeys(
            map(pid_of, ids[invoked[left_open[ids[invoked]]]].tolist()), (None, -1, {}))
        # Both bindings by their columns, not as tables of a million entries each: a read
        # that binds a record afresh asks them for a few of its records only.
        self.rid_payload = _RecordBindings(rows, ok_pids, rids)
        self.payload_rid = _PayloadBindings(self)
        self._append_order(appends, oks, opened_at[ids[oks]], ok_pids)
        self.registry = appends.registry
        # (payload ids are completed once each, by the pairing: no slot is set twice)
        rid_by_id = np.full(len(appends.registry.pids), _NONE, dtype=object)
        rid_by_id[ids[oks]] = np.fromiter(rids, dtype=object, count=len(rids))
        self.rid_by_id = rid_by_id.tolist()
        inv_of = np.full(len(appends.registry.pids), -1, dtype=np.int64)
        inv_of[ids[invoked]] = np.arange(len(invoked))
        self.ok_places = places[inv_of[ids[oks]]]
        self.ok_rows = rows
        self.bulk = True
        return True

    def _append_order(self, appends: Appends, oks: np.ndarray, invoked: np.ndarray,
                      pids: list[Any]) -> None:
        """append_order, in bulk: per shard, the highest batch acknowledged before each
        acknowledged append was invoked (appends numbered in history order)."""
        rows = appends.rid_array
        if rows is None or not len(oks):
            return
        shards, batches = rows[:, 0], rows[:, 1]
        found: list[tuple[int, int]] = []
        for s in distinct(shards):
            mine = np.flatnonzero(shards == s)
            batch = batches[mine]
            highest = np.maximum.accumulate(batch)
            before = np.searchsorted(oks[mine], invoked[mine])  # acks before its invocation
            late = np.flatnonzero(before > 0)
            earlier = highest[before[late] - 1]
            bad = earlier >= batch[late]
            found.extend(zip(mine[late[bad]].tolist(), earlier[bad].tolist(), strict=True))
        rids = appends.rids
        for k, earlier in sorted(found):
            add_anomaly(
                self.result,
                "append_order",
                {
                    "shard": rids[k][0],
                    "payload_id": pids[k],
                    "batch": rids[k][1],
                    "earlier_acked_max_batch": earlier,
                    "op_index": int(appends.indexes[oks[k]]),
                },
            )

    def walk(self, ops: list[Op], read_fs: frozenset[str]) -> None:
        """Op by op: every append in turn, then each read as it comes."""
        result = self.result
        order, producer_keys, retried = self.order, self.producer_keys, self.retried
        open_append, acked_add = self.open_append, self.acked.add
        open_elsewhere = self.open_elsewhere
        rid_payload, payload_rid = self.rid_payload, self.payload_rid
        done = self.done
        maybe_unacked = self.maybe_unacked
        invocations = 0
        # shard -> highest batch acknowledged so far, a new dict at each change: an
        # invocation keeps the one of its time. While op indexes increase (as recorded),
        # that is what the acks before it give, without a search of the done lists.
        highest: dict[Any, Any] = {}
        in_index_order = True
        last_index: Any = None
        for op in ops:
            v = op.value
            if type(v) is not dict and not isinstance(v, dict):
                continue
            f = op.f
            if f == "append":
                pid = v.get("payload_id")
                if pid is None:
                    continue
                process = op.process
                index = op.index
                if in_index_order:
                    if last_index is not None and not index > last_index:
                        in_index_order = False
                    last_index = index
                if op.type == "invoke":
                    pk = (process, v.get("key"))
                    pk_id = producer_keys.get(pk)
                    if pk_id is None:
                        pk_id = producer_keys[pk] = len(producer_keys)
                    known = len(order)
                    order[pid] = pk_id << _SHIFT | invocations
                    invocations += 1
                    if len(order) == known:
                        retried.add(pid)
                    other = open_append.get(pid)
                    if other is None or other[0] == process:
                        open_append[pid] = (process, index, highest)
                        if open_elsewhere:
                            open_elsewhere.pop((process, pid), None)
                    else:
                        open_elsewhere[(process, pid)] = (process, index, highest)
                    continue
                opened = open_append.get(pid)
                if opened is not None and opened[0] == process:
                    del open_append[pid]
                else:
                    opened = open_elsewhere.pop((process, pid), None) if open_elsewhere else None
                if op.type != "ok":
                    maybe_unacked.add(pid)
                    continue
                acked_add(pid)
                raw: Any = v.get("record_id")
                if (
                    type(raw) is list
                    and len(raw) == 3
                    and type(raw[0]) is int
                    and type(raw[1]) is int
                    and type(raw[2]) is int
                ):
                    rid = (raw[0], raw[1], raw[2])
                else:
                    converted = _rid(raw)
                    if converted is None:
                        continue
                    rid, raw = converted, list(converted)
                bound = rid_payload.setdefault(rid, pid)
                if bound != pid:
                    _conflict(result, rid, bound, pid, op.index)
                elif pid not in retried:
                    had = payload_rid.setdefault(pid, raw)
                    if had != raw:
                        _moved(result, pid, had, rid, op.index, "append")
                shard, batch = rid[0], rid[1]
                shard_done = done.get(shard)
                if shard_done is None:
                    shard_done = done[shard] = ([], [])
                idx, mx = shard_done
                if opened is not None:
                    if in_index_order:
                        earlier = opened[2].get(shard)
                    else:
                        k = bisect_left(idx, opened[1]) if idx else 0
                        earlier = mx[k - 1] if k else None
                    if earlier is not None and earlier >= batch:
                        add_anomaly(
                            result,
                            "append_order",
                            {
                                "shard": shard,
                                "payload_id": pid,
                                "batch": batch,
                                "earlier_acked_max_batch": earlier,
                                "op_index": index,
                            },
                        )
                idx.append(index)
                top = mx[-1] if mx else batch
                if batch > top:
                    top = batch
                mx.append(top)
                if highest.get(shard) != top:
                    highest = {**highest, shard: top}
            elif f in read_fs and op.type != "invoke":
                self.read(op, v)

    def read(self, op: Op, v: dict[str, Any], clean: int = 0,
             unbound: Sequence[int] = ()) -> None:
        """`clean` and `unbound`: what `_clean_reads` found of this read (0: nothing)."""
        records = v.get("records")
        if not records:
            return
        self.checked_records += len(records)
        if v.get("complete") or v.get("final"):
            if not self.complete_read(op, records, clean, unbound):
                self.read_records(op, v, records, True)
        elif not self.running_read(op, v, records, clean == 2 and self._still_bound(
                op, records, unbound)):
            self.read_records(op, v, records, False)

    def _still_bound(self, op: Op, records: Any, unbound: Sequence[int]) -> bool:
        """Whether the records no append bound were bound, each to its record id, by an
        earlier read."""
        if not unbound:
            return True
        columns = columns_of(records)
        if columns is None:
            return False
        pids, raws, get = columns.pids, columns.rids, self.payload_rid.get
        return all(get(pids[i], _NONE) == raws[i] for i in unbound)

    # -- clean reads, in C

    def _bound_columns(self, records: Any) -> Columns | None:
        """The columns of `records` if every one is a dict whose payload id is bound, both
        ways, to that very record id (given as a list)."""
        columns = columns_of(records)
        if columns is None:
            return None
        try:
            bound = self._bound(columns)
        except TypeError:  # an unhashable payload id: the slow pass says what it is
            return None
        if bound != columns.rids:
            return None
        return columns

    def _bound(self, columns: Columns) -> list[Any]:
        """The record id each record's payload id is bound to (_NONE: none). By the shared
        dense payload ids where the appends were taken in bulk: an index into a list, not
        a look-up in a table of a million payload ids."""
        ids = columns.ids(self.registry) if self.registry is not None else None
        if ids is None:
            return list(map(self.payload_rid.get, columns.pids, repeat(_NONE)))
        rid_by_id = self.rid_by_id
        known = len(self.registry.pids)  # type: ignore[union-attr]
        if len(rid_by_id) < known:
            rid_by_id.extend(repeat(_NONE, known - len(rid_by_id)))
        return list(map(rid_by_id.__getitem__, ids))

    def _bind(self, pid: Any, raw: list[Any]) -> None:
        """Note a payload id bound by a read in `rid_by_id` too (payload_rid has it)."""
        if self.registry is not None:
            (k,) = self.registry.of([pid]) or (None,)
            if k is not None:
                rid_by_id = self.rid_by_id
                if len(rid_by_id) <= k:
                    rid_by_id.extend(repeat(_NONE, k + 1 - len(rid_by_id)))
                rid_by_id[k] = raw

    def complete_read(self, op: Op, records: Any, clean: int = 0,
                      unbound: Sequence[int] = ()) -> bool:
        """A fresh read of the stream: one reader sequence of its own. One pass in C over
        a read that may hold the whole stream, so each record is touched once (when
        `clean`, found in order and bound as appended in bulk, only the `unbound` ones)."""
        columns = columns_of(records)
        if columns is None:
            return False
        raws = columns.rids
        try:
            if clean:
                if unbound and not self._binds_only_new(columns, unbound):
                    return False
            else:
                bound = map(eq, self._bound(columns), raws)
                increasing = chain(starmap(lt, pairwise(raws)), (True,))
                if not all(map(and_, bound, increasing)) and not self._binds_only_new(columns):
                    return False
        except TypeError:  # an unhashable payload id, record ids that do not compare
            return False
        reader = ("op", op.index)
        if reader in self.first_seen:  # two ops with one index: a sequence of both
            self.unclean.add(reader)
        self.first_seen.setdefault(reader, []).append(columns.pids)
        self.complete_readers.add(reader)
        return True

    def _binds_only_new(self, columns: Columns, unbound: Sequence[int] | None = None) -> bool:
        """For a complete read in increasing record id order whose records are bound but
        for a few (an indeterminate append, first read here): bind those, as the
        record-by-record pass would, if each is a new payload id under a new record id.
        `unbound`: the only records that may not be bound yet, where the others were found
        bound and in order in bulk."""
        raws: list[Any] = columns.rids
        pids = columns.pids
        rid_payload, payload_rid = self.rid_payload, self.payload_rid
        if unbound is None:
            if not all(map(lt, raws, islice(raws, 1, None))):
                return False
            bound = map(payload_rid.get, pids, repeat(_NONE))
            loose: Iterable[int] = compress(count(), map(ne, bound, raws))
        else:
            loose = [i for i in unbound if payload_rid.get(pids[i], _NONE) != raws[i]]
        new_rids: dict[tuple[Any, ...], Any] = {}
        new_pids: dict[Any, list[Any]] = {}
        for i in loose:
            pid, raw = pids[i], raws[i]
            if pid is None or type(raw) is not list or len(raw) != 3:
                return False
            rid = tuple(raw)
            if rid in rid_payload or rid in new_rids or pid in payload_rid or pid in new_pids:
                return False
            new_rids[rid] = pid
            new_pids[pid] = raw
        rid_payload.update(new_rids)
        payload_rid.update(new_pids)
        for pid, raw in new_pids.items():
            self._bind(pid, raw)
        return True

    def running_read(self, op: Op, v: dict[str, Any], records: Any, clean: bool = False) -> bool:
        """One more part of a consumer's or shard reader's sequence: of one shard, after
        what the reader saw of it before. `clean`: bound, in order and of one shard, as
        found in bulk."""
        columns = columns_of(records) if clean else self._bound_columns(records)
        if columns is None:
            return False
        pids, raws = columns.pids, columns.rids
        # The consumer column is shared with the other checkers. It says None both for a
        # record without a consumer (the op's reads it) and for one naming None: dict.get
        # tells the two apart.
        readers = set(columns.consumers)
        if None in readers:
            default_reader = v.get("consumer", op.process)
            readers = set(map(dict.get, records, repeat("consumer"), repeat(default_reader)))
        if len(readers) != 1:
            return False
        shard = raws[0][0]
        if not clean and (raws[-1][0] != shard or not all(map(lt, raws, islice(raws, 1, None)))):
            return False
        (reader,) = readers
        runs = self.runs.get(reader)
        run = runs.get(shard) if runs is not None else None
        if run and not raws[0] > run[-1]:
            return False
        if runs is None:
            runs = self.runs[reader] = {}
            self.out_of_order[reader] = set()
        if run is None:
            runs[shard] = list(raws)  # the run grows; the column is shared
        else:
            run.extend(raws)
        if reader in self.complete_readers:  # a consumer named like a complete read
            self.unclean.add(reader)
        self.first_seen.setdefault(reader, []).append(pids)
        return True

    # -- record by record

    def read_records(self, op: Op, v: dict[str, Any], records: Any, per_op: bool) -> None:
        result = self.result
        rid_payload, payload_rid = self.rid_payload, self.payload_rid
        rid_payload_get = rid_payload.get
        default_reader = ("op", op.index) if per_op else v.get("consumer", op.process)
        unclean = self.unclean
        if per_op:
            unclean.add(default_reader)
        # Usually every record of an op has one reader: keep its state at hand.
        cur_reader: Any = _NONE
        runs: dict[Any, list[Any]] = {}
        out_of_order: set[tuple[Any, ...]] = set()
        cur_first: list[Any] = []
        for rec in records:
            if type(rec) is not dict:
                continue
            reader = default_reader if per_op else rec.get("consumer", default_reader)
            if reader != cur_reader:
                cur_reader = reader
                if per_op:
                    runs, out_of_order = {}, set()
                else:
                    runs = self.runs.setdefault(reader, {})
                    out_of_order = self.out_of_order.setdefault(reader, set())
                cur_first = []
                self.first_seen.setdefault(reader, []).append(cur_first)
            pid = rec.get("payload_id")
            raw: Any = rec.get("record_id")
            if type(raw) not in _SEQUENCES or len(raw) != 3:
                if pid is not None:
                    cur_first.append(pid)
                    unclean.add(reader)
                continue
            rid = tuple(raw)
            rid_list = list(raw)
            if pid is not None:
                # A pair already bound was checked both ways when it was bound.
                bound = rid_payload_get(rid)
                if bound is None:
                    rid_payload[rid] = pid
                    had = payload_rid.setdefault(pid, rid_list)
                    if had is rid_list:
                        self._bind(pid, rid_list)
                    elif had != rid_list and pid not in self.retried:
                        if self.bulk:
                            raise _Redo
                        _moved(result, pid, payload_rid[pid], rid, op.index, "read")
                elif bound != pid:
                    if self.bulk:
                        raise _Redo
                    _conflict(result, rid, bound, pid, op.index)
            shard = rid[0]
            run = runs.get(shard)
            prev = run[-1] if run else None
            if prev is None or rid_list > prev:
                if run is None:
                    runs[shard] = [rid_list]
                else:
                    run.append(rid_list)
                if pid is not None:
                    cur_first.append(pid)
                    if payload_rid.get(pid) != rid_list:
                        unclean.add(reader)
                continue
            # Within one complete read only an immediate repeat counts as a repeat: its
            # records need nothing more than the last one.
            if _seen(run, out_of_order, rid_list, rid) if not per_op else rid_list == prev:
                self.redeliveries += 1
                continue
            add_anomaly(
                result,
                "shard_order",
                {
                    "reader": reader,
                    "shard": shard,
                    "previous": list(prev),
                    "seen": rid_list,
                    "op_index": op.index,
                },
            )
            out_of_order.add(rid)
            if pid is not None:
                cur_first.append(pid)
                unclean.add(reader)


class _RecordBindings(MutableMapping[tuple[Any, ...], Any]):
    """Record id (a tuple) -> payload id, where the appends were taken in bulk: the
    acknowledged record ids, distinct rows of three ints, sorted per shard by batch and
    index (searched with bisect), and the bindings reads made beside them. A record id of
    other than plain ints (which may equal an int, as a dict key) or out of the bounds of
    one int key has the whole dict built, as it was before."""

    def __init__(self, rows: np.ndarray, pids: list[Any], rids: list[Any]) -> None:
        self.pids, self.rids = pids, rids
        self.more: dict[tuple[Any, ...], Any] = {}
        self.full: dict[tuple[Any, ...], Any] | None = None
        self.by_shard: dict[int, tuple[list[int], list[int]]] = {}
        batch, at = rows[:, 1], rows[:, 2]
        if len(rows) and (batch.min() < 0 or batch.max() >= 1 << 31 or at.min() < 0
                          or at.max() >= 1 << 32):
            self._whole()
            return
        keys = batch << 32 | at
        for s in distinct(rows[:, 0]).tolist():
            mine = np.flatnonzero(rows[:, 0] == s)
            mine = mine[np.argsort(keys[mine], kind="stable")]
            self.by_shard[s] = (keys[mine].tolist(), mine.tolist())

    def _whole(self) -> dict[tuple[Any, ...], Any]:
        if self.full is None:
            self.full = dict(zip(map(tuple, self.rids), self.pids, strict=True))
            self.full.update(self.more)
        return self.full

    def get(self, rid: tuple[Any, ...], default: Any = None) -> Any:
        hit = self.more.get(rid)  # (TypeError for an unhashable part, as a dict says)
        if hit is not None:
            return hit
        if self.full is not None:
            return self.full.get(rid, default)
        s, b, i = rid
        if type(s) is not int or type(b) is not int or type(i) is not int:
            return self._whole().get(rid, default)
        found = self.by_shard.get(s)
        if found is None or not (0 <= b < 1 << 31 and 0 <= i < 1 << 32):
            return default
        keys, where = found
        key = b << 32 | i
        k = bisect_left(keys, key)
        return self.pids[where[k]] if k < len(keys) and keys[k] == key else default

    def __getitem__(self, rid: tuple[Any, ...]) -> Any:
        hit = self.get(rid, _NONE)
        if hit is _NONE:
            raise KeyError(rid)
        return hit

    def __contains__(self, rid: object) -> bool:
        return self.get(rid, _NONE) is not _NONE  # type: ignore[arg-type]

    def __setitem__(self, rid: tuple[Any, ...], pid: Any) -> None:
        self.more[rid] = pid
        if self.full is not None:
            self.full[rid] = pid

    def __delitem__(self, rid: tuple[Any, ...]) -> None:
        raise TypeError("bindings are never undone")

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())


class _PayloadBindings(MutableMapping[Any, list[Any]]):
    """Payload id -> record id (a list), where the appends were taken in bulk: the fold's
    `rid_by_id`, indexed by the shared dense payload ids (what `_bind` keeps up)."""

    def __init__(self, fold: _Fold) -> None:
        self.fold = fold

    def get(self, pid: Any, default: Any = None) -> Any:
        registry = self.fold.registry
        k = registry.index.get(pid) if registry is not None else None
        rid_by_id = self.fold.rid_by_id
        if k is None or k >= len(rid_by_id):
            return default
        raw = rid_by_id[k]
        return default if raw is _NONE else raw

    def __getitem__(self, pid: Any) -> list[Any]:
        raw = self.get(pid, _NONE)
        if raw is _NONE:
            raise KeyError(pid)
        return raw  # type: ignore[no-any-return]

    def __contains__(self, pid: object) -> bool:
        return self.get(pid, _NONE) is not _NONE

    def setdefault(self, pid: Any, raw: Any = None) -> Any:
        had = self.get(pid, _NONE)
        if had is not _NONE:
            return had
        self.fold._bind(pid, raw)
        return raw

    def __setitem__(self, pid: Any, raw: list[Any]) -> None:
        self.fold._bind(pid, raw)

    def __delitem__(self, pid: Any) -> None:
        raise TypeError("bindings are never undone")

    def __iter__(self) -> Iterator[Any]:
        pids = self.fold.registry.pids if self.fold.registry is not None else []
        return (pids[k] for k, raw in enumerate(self.fold.rid_by_id) if raw is not _NONE)

    def __len__(self) -> int:
        return sum(raw is not _NONE for raw in self.fold.rid_by_id)


def _seen(
    run: Any, out_of_order: set[tuple[Any, ...]], rid_list: list[Any], rid: tuple[Any, ...]
) -> bool:
    """Whether a reader saw this record before: in its increasing run of the shard, or
    among those it saw out of order."""
    k = bisect_left(run, rid_list)
    return (k < len(run) and run[k] == rid_list) or rid in out_of_order


def _judge_key_order(fold: _Fold, result: Result) -> None:
    """Key order, judged at the end because an ack may be recorded after a read that saw
    it: in each reader sequence, the first appearances of one producer's appends of one
    key keep the order it invoked them in (indeterminate appends left out)."""
    if fold.ok_places is not None and fold.ok_rows is not None:
        in_order, one_shard = _acked_record_ids_follow_producer_order(
            fold.ok_places, fold.ok_rows)
        order: dict[Any, int] | None = None
    else:
        order = _key_order_places(fold)
        in_order, one_shard = _record_ids_follow_producer_order(order, fold.payload_rid)
    for reader, chunks in fold.first_seen.items():
        if in_order and reader not in fold.unclean:
            # Its records come in record id order (of each shard), under the ids they are
            # bound to: in producer order, if each producer's key lives on one shard (or
            # the sequence is a complete read, ordered by record id over all shards).
            if one_shard or reader in fold.complete_readers:
                continue
        if order is None:
            order = _key_order_places(fold)
        pids = list(chain.from_iterable(chunks))
        if not _in_key_order(pids, order):
            _key_order_anomalies(result, reader, pids, order, fold.producer_keys)


def _key_order_places(fold: _Fold) -> dict[Any, int]:
    """Payload id -> its place in producer order, for the acknowledged appends."""
    order = fold.order
    if fold.lazy is not None and fold.registry is not None and fold.ok_pids is not None:
        ids, places = fold.lazy
        fold.lazy = None
        order.update(zip(map(fold.registry.pids.__getitem__, ids.tolist()), places.tolist(),
                         strict=True))
        fold.acked.update(fold.ok_pids)
    # Appends never acknowledged leave the ranking: each had a completion other than ok,
    # or none at all.
    unacked = fold.maybe_unacked.union(fold.open_append)
    unacked.update(pid for _, pid in fold.open_elsewhere)
    unacked.difference_update(fold.acked)
    for pid in unacked:
        order.pop(pid, None)
    return order


def _record_ids_follow_producer_order(
    order: dict[Any, int], payload_rid: Mapping[Any, list[Any]]
) -> tuple[bool, bool]:
    """Whether, for every producer and key, the record ids its acknowledged appends are
    bound to increase in the order it invoked them; and whether each such producer key's
    records are on one shard."""
    places = list(order.values())
    ranks = list(map(and_, places, repeat(_LOW)))
    items: Iterable[tuple[Any, int]] = order.items()
    if not all(map(lt, ranks, islice(ranks, 1, None))):  # retries were invoked again
        items = sorted(order.items(), key=lambda item: item[1] & _LOW)
    latest: dict[int, list[Any]] = {}
    one_shard = True
    rid_of = payload_rid.get
    for pid, place in items:
        rid = rid_of(pid)
        if rid is None:
            continue
        pk_id = place >> _SHIFT
        prev = latest.get(pk_id)
        if prev is not None:
            if not rid > prev:
                return False, False
            if rid[0] != prev[0]:
                one_shard = False
        latest[pk_id] = rid
    return True, one_shard


def _acked_record_ids_follow_producer_order(
    places: np.ndarray, rows: np.ndarray
) -> tuple[bool, bool]:
    """`_record_ids_follow_producer_order` where the appends were taken in bulk: every
    invoked payload id left in the order is an acknowledged append's, bound to its record
    id; `places` and `rows` are theirs."""
    if len(places) < 2:
        return True, True
    by_key = np.lexsort((places & _LOW, places >> _SHIFT))
    keys = (places >> _SHIFT)[by_key]
    other = keys[1:] != keys[:-1]  # a pair across two producer keys: not compared
    shard, batch, index = (rows[by_key, k] for k in range(3))
    shard_same = (shard[1:] == shard[:-1]) | other
    later = (shard[1:] > shard[:-1]) | shard_same & (
        (batch[1:] > batch[:-1]) | (batch[1:] == batch[:-1]) & (index[1:] > index[:-1]))
    if not np.all(later | other):
        return False, False
    return True, bool(shard_same.all())


def _in_key_order(pids: list[Any], order: dict[Any, int]) -> bool:
    """Whether no producer's key goes back in `pids`. The invocation numbers split it into
    stretches that never go down; a key can only go back from one stretch to a later one."""
    found = list(map(order.get, pids))
    if None in found:
        found = list(compress(found, map(is_not, found, repeat(None))))
    places = cast(list[int], found)
    ranks = list(map(and_, places, repeat(_LOW)))
    if all(map(le, ranks, islice(ranks, 1, None))):
        return True
    keys = list(map(rshift, places, repeat(_SHIFT)))
    cuts = [0, *compress(count(1), map(gt, ranks, islice(ranks, 1, None))), len(ranks)]
    highest: dict[int, int] = {}
    for a, b in pairwise(cuts):
        stretch_keys, stretch_ranks = keys[a:b], ranks[a:b]
        lowest = dict(zip(reversed(stretch_keys), reversed(stretch_ranks), strict=True))
        for key, r in lowest.items():
            h = highest.get(key)
            if h is not None and r < h:
                return False
        highest.update(zip(stretch_keys, stretch_ranks, strict=True))
    return True


def _key_order_anomalies(
    result: Result,
    reader: Any,
    pids: list[Any],
    order: dict[Any, int],
    producer_keys: dict[tuple[Any, Any], int],
) -> None:
    names = {pk_id: pk for pk, pk_id in producer_keys.items()}
    latest: dict[int, tuple[int, Any]] = {}
    for pid in pids:
        place = order.get(pid)
        if place is None:
            continue
        pk_id, n = place >> _SHIFT, place & _LOW
        prev = latest.get(pk_id)
        if prev is not None and n < prev[0]:
            pk = names[pk_id]
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
            latest[pk_id] = (n, pid)


def _conflict(result: Result, rid: tuple[Any, ...], bound: Any, pid: Any, op_index: int) -> None:
    add_anomaly(
        result,
        "record_id_conflict",
        {"record_id": list(rid), "payloads": [bound, pid], "op_index": op_index},
    )


def _moved(
    result: Result, pid: Any, had: Sequence[Any], rid: Sequence[Any], op_index: int, where: str
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
