"""Columns of a read's records, taken once and shared by the checkers that `check_all` runs.

Most of a checker's time on a long history goes into the records of its reads and fetches
(a complete read returns the whole stream), and every checker wants the same few fields of
each record: its payload id, its record id, its consumer. `columns_of(records)` takes one
field of every record as a list, in C, the first time a checker asks for it; inside
`shared_columns()` (what `check_all` opens around its checkers) it takes every field and
the dense ids below in one compiled pass when it first meets the read, and keeps the lists,
so the next checker that asks for the same read's field gets the same list instead of
walking a million scattered dicts again. Outside it every call builds its columns afresh, so a
checker run alone gives the same verdict. Columns are read-only: a checker that needs to
change one copies it.

Payload ids are strings, and a checker that counts or finds them probes a table of a
million of them per record. `PayloadIds` numbers them 0, 1, ... once for all the checkers
of a `check_all` (`Columns.ids` takes a read's numbers once), so that each can count and
mark them in numpy arrays. The history's appends as integer columns
(harness.checkers.table) are kept the same way.

`record_by_record()` turns every shared fast path off (`columns_of` and `table_of` say
None): the checkers then walk each op and record in Python, which is what the tests
compare the fast paths with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import compress, count, repeat
from operator import is_, itemgetter
from typing import Any

import numpy as np

from harness.checkers.extract import compiled

_MEMO: ContextVar[dict[int, tuple[list[Any], Columns | None]] | None] = ContextVar(
    "hstream_conformance_record_columns", default=None
)
# Other shared things (harness.checkers.table): kind -> what was kept.
_KEPT: ContextVar[dict[str, Any] | None] = ContextVar(
    "hstream_conformance_shared_tables", default=None
)
_FAST: ContextVar[bool] = ContextVar("hstream_conformance_fast_paths", default=True)


class Columns:
    """One read's records (a list of dicts) as columns, each taken on first use (inside
    `shared_columns()` with the compiled extractor, all at once: see `columns_of`)."""

    __slots__ = ("records", "_pids", "_rids", "_consumers", "_registry", "_id_array",
                 "_id_list")

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._pids: list[Any] | None = None
        self._rids: list[Any] | None = None
        self._consumers: list[Any] | None = None
        self._registry: PayloadIds | None = None  # whose dense ids _id_array holds
        self._id_array: np.ndarray | None = None  # None with a registry: none can be taken
        self._id_list: list[int] | None = None

    @classmethod
    def taken(cls, records: list[Any], registry: PayloadIds) -> Columns | None:
        """Every column of `records` and their dense ids in `registry`, in one compiled
        pass (each of a million scattered records visited once: visiting it again costs a
        cache miss); None if a record is no dict."""
        fast = compiled()
        assert fast is not None
        try:
            pids, rids, consumers, taken = fast.read_columns(records, registry.index,
                                                             registry.pids)
        except TypeError:  # a record that is no dict
            return None
        columns = cls(records)
        columns._pids, columns._rids, columns._consumers = pids, rids, consumers
        columns._registry = registry
        columns._id_array = np.frombuffer(taken, np.int64) if taken is not None else None
        return columns

    @property
    def pids(self) -> list[Any]:
        """`record.get("payload_id")` of each record."""
        if self._pids is None:
            self._pids = _column(self.records, "payload_id")
        return self._pids

    @property
    def rids(self) -> list[Any]:
        """`record.get("record_id")` of each record, as the history spelt it (lists)."""
        if self._rids is None:
            self._rids = _column(self.records, "record_id")
        return self._rids

    @property
    def consumers(self) -> list[Any]:
        """`record.get("consumer")` of each record (None where it names none)."""
        if self._consumers is None:
            self._consumers = _column(self.records, "consumer")
        return self._consumers

    def ids(self, registry: PayloadIds) -> list[int] | None:
        """The dense id (`registry`'s) of each record's payload id, or None if one of them
        cannot key a dict."""
        if self._take(registry) is None:
            return None
        if self._id_list is None:
            self._id_list = self._id_array.tolist()  # type: ignore[union-attr]
        return self._id_list

    def id_array(self, registry: PayloadIds) -> np.ndarray | None:
        """`ids(registry)` as an int64 array, or None if there are none."""
        return self._take(registry)

    def _take(self, registry: PayloadIds) -> np.ndarray | None:
        if self._registry is not registry:
            ids = registry.of(self.pids)
            self._registry, self._id_list = registry, ids
            self._id_array = np.array(ids, dtype=np.int64) if ids is not None else None
        return self._id_array


class PayloadIds:
    """Dense ids 0, 1, ... for payload ids, in the order they were first met (None is one
    too). Looking a million read payload ids up in a big table is most of what a checker
    pays for them; inside `shared_columns()` one registry serves every checker, and each
    read's ids are looked up once (`Columns.ids`)."""

    __slots__ = ("index", "pids")

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.pids: list[Any] = []  # id -> payload id

    def of(self, pids: list[Any]) -> list[int] | None:
        """The ids of `pids` (new ones numbered as first met), or None if one is unhashable."""
        index = self.index
        try:
            return list(map(index.__getitem__, pids))  # the usual read: all known
        except KeyError:
            pass
        except TypeError:
            return None
        try:
            ids: list[Any] = list(map(index.get, pids))
        except TypeError:  # an unhashable one after the first unknown
            return None
        if None in ids:
            # the new ones, in the order first met, numbered at once (a history's appends
            # bring a million: numbered one by one in Python, they cost a second)
            new = dict.fromkeys(compress(pids, map(is_, ids, repeat(None))))
            known = self.pids
            index.update(zip(new, count(len(known))))
            known.extend(new)
            ids = list(map(index.__getitem__, pids))
        return ids


def payload_ids() -> PayloadIds:
    """The registry of payload ids: the shared one inside `shared_columns()`, else a new one."""
    memo = _KEPT.get()
    if memo is None or not _FAST.get():
        return PayloadIds()
    registry = memo.get("payload-ids")
    if registry is None:
        registry = memo["payload-ids"] = PayloadIds()
    return registry  # type: ignore[no-any-return]


def _column(records: list[dict[str, Any]], field: str) -> list[Any]:
    """`record.get(field)` of each record. Subscripting is a third cheaper than `dict.get`
    on a million records; a record without the field sends the whole column to `get`."""
    try:
        return list(map(itemgetter(field), records))
    except KeyError:
        return list(map(dict.get, records, repeat(field)))


def columns_of(records: Any) -> Columns | None:
    """The columns of `records` if it is a non-empty list of dicts, else None (the caller's
    record-by-record path says what is wrong with it)."""
    if type(records) is not list or not _FAST.get():
        return None
    memo = _MEMO.get()
    if memo is not None:
        hit = memo.get(id(records))
        if hit is not None and hit[0] is records:
            return hit[1]
    if not records:
        columns = None
    elif memo is not None and compiled() is not None:
        # every checker inside wants the ids, and most the other columns: all in one pass
        columns = Columns.taken(records, payload_ids())
    else:
        columns = Columns(records) if set(map(type, records)) == {dict} else None
        if columns is not None and memo is not None:
            columns.ids(payload_ids())  # numbered now, as the compiled pass does
    if memo is not None:
        memo[id(records)] = (records, columns)  # the list is kept, so its id stays its own
    return columns


@contextmanager
def shared_columns() -> Iterator[None]:
    """Inside: columns are taken once per read and shared by every checker that asks."""
    token = _MEMO.set({})
    kept = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(kept)
        _MEMO.reset(token)


def kept() -> dict[str, Any] | None:
    """Inside `shared_columns()`, where other shared things are kept (None outside)."""
    return _KEPT.get()


def fast_paths() -> bool:
    """Whether the checkers may take their shared fast paths (see `record_by_record`)."""
    return _FAST.get()


@contextmanager
def record_by_record() -> Iterator[None]:
    """Inside: no shared fast path; every checker walks each op and record in Python."""
    token = _FAST.set(False)
    try:
        yield
    finally:
        _FAST.reset(token)
