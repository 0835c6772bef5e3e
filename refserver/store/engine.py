"""The store's state: per-log entry sequences and a versioned metadata map, in SQLite.

Durability: the database runs in WAL mode with `synchronous=FULL`. In WAL mode FULL makes
every COMMIT fsync the write-ahead log before it returns (NORMAL would only sync at
checkpoints, so a power loss or kill -9 right after a commit could drop it). An Append is
answered only after the COMMIT holding its entry has returned, so an acknowledged append
survives kill -9 of the store process. Readers use their own connections: WAL lets them
read the last committed state while the writer commits.

Group commit: one writer task owns the write connection. Appends and metadata writes queue
up while a commit is in flight; the next commit takes everything queued at once, so N
concurrent appends cost one fsync instead of N (`StoreStats` counts both).

LSNs are assigned in the event loop when a request arrives (so a log's order is arrival
order), start at 1, and are never reused: `logs.next_lsn` survives trims, deletes and
restarts. `durable=False` (the ack-before-durable defect) answers at once and leaves the
entry in memory until the flush timer commits it; those entries are readable while they
wait, and a kill -9 loses them.

`ack_on_sequence=True` (the ack-on-sequence defect) answers every append as soon as it has
its LSN and leaves it for the flush timer's commit (commits of metadata meanwhile do not
take it); unlike a non-durable append it stays unreadable until committed. Opened with it,
the store starts each log at a new LSN epoch (the next multiple of 2^32, plus 1), so the
LSNs of entries a kill -9 lost are never given again and readers go past the gap.

`fsync=False` (the fsync-lie defect) commits appends with `synchronous=OFF`: SQLite then
does not fsync, so the COMMIT returns once its pages are written to the OS. That survives a
kill -9 of the store (the page cache keeps them) but not a power loss. Commits holding
metadata writes keep `synchronous=FULL` (their fsync of the WAL also makes the appends
before them durable): the lie is about appends, so streams and subscriptions survive.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("refserver.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    log_id INTEGER PRIMARY KEY,
    next_lsn INTEGER NOT NULL,
    trim_point INTEGER NOT NULL,
    last_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    log_id INTEGER NOT NULL,
    lsn INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (log_id, lsn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_time ON entries (log_id, ts);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# SQLite stores signed 64-bit integers; log ids are u64 on the wire, so they are stored
# shifted into the signed range.
_U64_OFFSET = 1 << 63
# With the ack-on-sequence defect a restarted store numbers each log from its next epoch.
EPOCH_BITS = 32
# Bounds one Read answer so it stays well under the gRPC message limit.
MAX_READ_BYTES = 32 * 1024 * 1024


def _db_id(log_id: int) -> int:
    return log_id - _U64_OFFSET


def _connect(path: Path, fsync: bool = True) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL" if fsync else "PRAGMA synchronous=OFF")
    connection.execute("PRAGMA busy_timeout=10000")
    return connection


@dataclass
class Entry:
    lsn: int
    timestamp_ms: int
    payload: bytes


@dataclass
class PendingEntry:
    log_id: int
    entry: Entry
    # True once the client has its answer (non-durable appends): readers may see it.
    acked: bool


@dataclass
class LogState:
    next_lsn: int = 1
    trim_point: int = 0
    last_ts: int = 0
    durable_tail: int = 0
    # Entries with an LSN, not yet committed, in LSN order.
    pending: list[PendingEntry] = field(default_factory=list)

    def visible_tail(self) -> int:
        """Last LSN a reader may see: committed, then acknowledged in-memory entries."""
        tail = self.durable_tail
        for pending in self.pending:
            if not pending.acked or pending.entry.lsn != tail + 1:
                break
            tail = pending.entry.lsn
        return tail


@dataclass
class ReadResult:
    entries: list[Entry]
    tail_lsn: int
    trim_point: int


@dataclass
class StoreStats:
    appends: int = 0
    commits: int = 0
    largest_commit: int = 0


class MetaConflict(Exception):
    pass


@dataclass
class _WriteOp:
    kind: str  # "meta_put" | "meta_delete" | "trim" | "delete_log"
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None


class StoreEngine:
    """Single-process owner of the database; every method runs on the event loop."""

    def __init__(
        self,
        data_dir: Path,
        flush_interval: float = 0.5,
        fsync: bool = True,
        ack_on_sequence: bool = False,
    ) -> None:
        self.path = data_dir / "store.sqlite3"
        self.flush_interval = flush_interval
        self.fsync = fsync
        self.ack_on_sequence = ack_on_sequence
        self.stats = StoreStats()
        self._logs: dict[int, LogState] = {}
        self._queued_ops: list[_WriteOp] = []
        self._appends_waiting: list[tuple[PendingEntry, asyncio.Future[Entry] | None]] = []
        # ack-on-sequence: answered appends that only the flush timer hands to a commit.
        self._appends_sequenced: list[PendingEntry] = []
        self._writer: sqlite3.Connection | None = None
        self._write_executor = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._read_executor = ThreadPoolExecutor(4, thread_name_prefix="store-reader")
        self._readers = threading.local()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database (raises OSError / sqlite3.Error on a bad dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path, self.fsync)
        writer.executescript(SCHEMA)
        for log_id, stored_next_lsn, trim_point, last_ts in writer.execute(
            "SELECT log_id, next_lsn, trim_point, last_ts FROM logs"
        ):
            next_lsn = stored_next_lsn
            if self.ack_on_sequence:  # the defect's new epoch: lost LSNs are not reused
                next_lsn = ((((stored_next_lsn - 1) >> EPOCH_BITS) + 1) << EPOCH_BITS) + 1
            self._logs[log_id + _U64_OFFSET] = LogState(
                next_lsn=next_lsn,
                trim_point=trim_point,
                last_ts=last_ts,
                durable_tail=next_lsn - 1,
            )
        self._writer = writer

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="store-writer"),
            asyncio.create_task(self._flush_timer(), name="store-flush-timer"),
        ]

    async def close(self) -> None:
        """Commit what is queued (also non-durable entries), then stop."""
        self._closing = True
        writer, flush_timer = self._tasks
        flush_timer.cancel()
        self._hand_over_sequenced()
        self._wake.set()
        await asyncio.gather(flush_timer, writer, return_exceptions=True)
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._write_executor, self._writer.close
            )
        self._write_executor.shutdown(wait=True)
        self._read_executor.shutdown(wait=True)

    # -- appends -----------------------------------------------------------------------

    def _log(self, log_id: int) -> LogState:
        state = self._logs.get(log_id)
        if state is None:
            state = self._logs[log_id] = LogState()
        return state

    async def append(self, log_id: int, payload: bytes, durable: bool) -> Entry:
        state = self._log(log_id)
        # Append time comes from the store; kept non-decreasing per log so FindTime can
        # rely on time order matching LSN order even if the wall clock steps back.
        now = max(int(time.time() * 1000), state.last_ts)
        state.last_ts = now
        entry = Entry(state.next_lsn, now, payload)
        state.next_lsn += 1
        pending = PendingEntry(log_id, entry, acked=not durable)
        state.pending.append(pending)
        self.stats.appends += 1
        if self.ack_on_sequence and durable:
            # The defect: answered now, unreadable (`acked` stays False) and left for the
            # flush timer's commit; commits of metadata meanwhile do not take it.
            self._appends_sequenced.append(pending)
            return entry
        if not durable:
            self._appends_waiting.append((pending, None))
            return entry
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._appends_waiting.append((pending, future))
        self._wake.set()
        return await future

    # -- writer ------------------------------------------------------------------------

    async def _flush_timer(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self._hand_over_sequenced()
            if self._appends_waiting:
                self._wake.set()

    def _hand_over_sequenced(self) -> None:
        self._appends_waiting.extend((pending, None) for pending in self._appends_sequenced)
        self._appends_sequenced.clear()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._appends_waiting or self._queued_ops:
                await self._commit_queued()
            if self._closing and not (self._appends_waiting or self._queued_ops):
                return

    async def _commit_queued(self) -> None:
        appends, self._appends_waiting = self._appends_waiting, []
        ops, self._queued_ops = self._queued_ops, []
        log_rows = {
            pending.log_id: (
                self._logs[pending.log_id].next_lsn,
                self._logs[pending.log_id].trim_point,
                self._logs[pending.log_id].last_ts,
            )
            for pending, _ in appends
        }
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._write_executor, self._commit, [p for p, _ in appends], log_rows, ops
            )
        except Exception as error:  # the whole transaction failed: every caller hears it
            log.exception("commit of %d appends and %d ops failed", len(appends), len(ops))
            for pending, future in appends:
                state = self._logs[pending.log_id]
                if pending in state.pending:
                    state.pending.remove(pending)
                if future is not None and not future.done():
                    future.set_exception(error)
            for op in ops:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(error)
            return
        self.stats.commits += 1
        self.stats.largest_commit = max(self.stats.largest_commit, len(appends) + len(ops))
        for pending, future in appends:
            state = self._logs[pending.log_id]
            state.durable_tail = max(state.durable_tail, pending.entry.lsn)
            state.pending.remove(pending)
            pending.acked = True
            if future is not None and not future.done():
                future.set_result(pending.entry)
        for op, result in zip(ops, results, strict=True):
            if op.kind == "trim":
                state = self._log(op.args[0])
                state.trim_point = max(state.trim_point, result)
            if op.future is not None and not op.future.done():
                if isinstance(result, Exception):
                    op.future.set_exception(result)
                else:
                    op.future.set_result(result)

    def _commit(
        self,
        appends: list[PendingEntry],
        log_rows: dict[int, tuple[int, int, int]],
        ops: list[_WriteOp],
    ) -> list[Any]:
        writer = self._writer
        assert writer is not None
        results: list[Any] = []
        if not self.fsync:
            writer.execute("PRAGMA synchronous=FULL" if ops else "PRAGMA synchronous=OFF")
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.executemany(
                "INSERT INTO entries (log_id, lsn, ts, payload) VALUES (?, ?, ?, ?)",
                [
                    (_db_id(p.log_id), p.entry.lsn, p.entry.timestamp_ms, p.entry.payload)
                    for p in appends
                ],
            )
            writer.executemany(
                "INSERT INTO logs (log_id, next_lsn, trim_point, last_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (log_id) DO UPDATE SET next_lsn = max(next_lsn, excluded.next_lsn),"
                " last_ts = max(last_ts, excluded.last_ts)",
                [(_db_id(log_id), *row) for log_id, row in log_rows.items()],
            )
            for op in ops:
                results.append(self._apply_op(writer, op))
            writer.execute("COMMIT")
        except BaseException:
            # On an IO error (EIO, ENOSPC) SQLite has rolled back already; a second ROLLBACK
            # would replace the disk's error with "no transaction is active".
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise
        return results

    def _apply_op(self, writer: sqlite3.Connection, op: _WriteOp) -> Any:
        if op.kind == "meta_put":
            key, value, expected = op.args
            return self._meta_write(writer, key, value, expected)
        if op.kind == "meta_delete":
            key, expected = op.args
            return self._meta_write(writer, key, None, expected)
        if op.kind == "trim":
            log_id, lsn, next_lsn = op.args
            # Trimming past the tail would hide the next appends; cap at the tail.
            point = min(lsn, next_lsn - 1)
            writer.execute(
                "DELETE FROM entries WHERE log_id = ? AND lsn <= ?", (_db_id(log_id), point)
            )
            writer.execute(
                "INSERT INTO logs (log_id, next_lsn, trim_point, last_ts) VALUES (?, ?, ?, 0)"
                " ON CONFLICT (log_id) DO UPDATE SET"
                " trim_point = max(trim_point, excluded.trim_point),"
                " next_lsn = max(next_lsn, excluded.next_lsn)",
                (_db_id(log_id), next_lsn, point),
            )
            return point
        raise ValueError(f"unknown write op {op.kind}")

    @staticmethod
    def _meta_write(
        writer: sqlite3.Connection, key: str, value: bytes | None, expected: int
    ) -> tuple[bool, int]:
        row = writer.execute("SELECT version FROM meta WHERE key = ?", (key,)).fetchone()
        current = row[0] if row else 0
        if expected == 0 and row is not None:
            return False, current
        if expected > 0 and current != expected:
            return False, current
        if value is None:
            if row is None:
                return expected <= 0, 0
            writer.execute("DELETE FROM meta WHERE key = ?", (key,))
            return True, 0
        # Versions come from one store-wide counter, so a key deleted and written again
        # never repeats a version a CAS could confuse with the old value (no ABA).
        writer.execute(
            "INSERT INTO counters (name, value) VALUES ('meta_version', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1"
        )
        (version,) = writer.execute(
            "SELECT value FROM counters WHERE name = 'meta_version'"
        ).fetchone()
        writer.execute(
            "INSERT INTO meta (key, value, version) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
            (key, value, version),
        )
        return True, version

    async def _write(self, kind: str, *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued_ops.append(_WriteOp(kind, args, future))
        self._wake.set()
        return await future

    # -- reads -------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            connection = self._readers.connection = _connect(self.path)
        return connection

    async def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._reader().execute(sql, params).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._read_executor, run)

    async def read(
        self, log_id: int, from_lsn: int, until_lsn: int, max_entries: int
    ) -> ReadResult:
        state = self._logs.get(log_id)
        if state is None:
            return ReadResult([], 0, 0)
        tail = state.visible_tail()
        start = max(from_lsn, state.trim_point + 1, 1)
        end = tail if until_lsn == 0 else min(until_lsn, tail)
        limit = max_entries if max_entries > 0 else 1000
        entries: list[Entry] = []
        size = 0
        # Every pass either takes entries or stops, so the loop is bounded by `limit`.
        while start <= end and len(entries) < limit and size < MAX_READ_BYTES:
            db_end = min(end, state.durable_tail)
            if start <= db_end:
                rows = await self._query(
                    "SELECT lsn, ts, payload FROM entries"
                    " WHERE log_id = ? AND lsn >= ? AND lsn <= ? ORDER BY lsn LIMIT ?",
                    (_db_id(log_id), start, db_end, limit - len(entries)),
                )
                if not rows:
                    break  # trimmed meanwhile
                for lsn, ts, payload in rows:
                    entries.append(Entry(lsn, ts, bytes(payload)))
                    size += len(payload)
                    start = lsn + 1
                    if size >= MAX_READ_BYTES:
                        break
                continue
            taken = False
            for pending in state.pending:
                entry = pending.entry
                if entry.lsn < start:
                    continue
                if (
                    entry.lsn != start
                    or entry.lsn > end
                    or not pending.acked
                    or len(entries) >= limit
                    or size >= MAX_READ_BYTES
                ):
                    break
                entries.append(entry)
                size += len(entry.payload)
                start = entry.lsn + 1
                taken = True
            # A commit may have moved entries from memory to the database while the
            # query ran; look there again before giving up.
            if not taken and start > min(end, state.durable_tail):
                break
        return ReadResult(entries, tail, state.trim_point)

    def tail(self, log_id: int) -> int:
        state = self._logs.get(log_id)
        return state.visible_tail() if state else 0

    async def find_time(self, log_id: int, timestamp_ms: int) -> int:
        state = self._logs.get(log_id)
        if state is None:
            return 1
        rows = await self._query(
            "SELECT min(lsn) FROM entries WHERE log_id = ? AND ts >= ?",
            (_db_id(log_id), timestamp_ms),
        )
        if rows and rows[0][0] is not None:
            return max(int(rows[0][0]), state.trim_point + 1)
        for pending in state.pending:
            if pending.acked and pending.entry.timestamp_ms >= timestamp_ms:
                return pending.entry.lsn
        return state.visible_tail() + 1

    async def trim(self, log_id: int, lsn: int) -> int:
        state = self._log(log_id)
        return int(await self._write("trim", log_id, lsn, state.next_lsn))

    async def delete_log(self, log_id: int) -> None:
        """Drop every entry; the LSN counter stays, so LSNs are never handed out twice."""
        state = self._log(log_id)
        await self.trim(log_id, state.next_lsn - 1)

    # -- metadata ----------------------------------------------------------------------

    async def meta_get(self, key: str) -> tuple[bytes, int] | None:
        rows = await self._query("SELECT value, version FROM meta WHERE key = ?", (key,))
        return (bytes(rows[0][0]), int(rows[0][1])) if rows else None

    async def meta_put(self, key: str, value: bytes, expected_version: int) -> tuple[bool, int]:
        ok, version = await self._write("meta_put", key, value, expected_version)
        return bool(ok), int(version)

    async def meta_delete(self, key: str, expected_version: int) -> tuple[bool, int]:
        ok, version = await self._write("meta_delete", key, expected_version)
        return bool(ok), int(version)

    async def meta_list(self, prefix: str) -> list[tuple[str, bytes, int]]:
        # Range scan instead of LIKE: keys may contain '%' or '_'.
        upper = prefix + "\U0010ffff"
        rows = await self._query(
            "SELECT key, value, version FROM meta WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, upper),
        )
        return [(str(k), bytes(v), int(ver)) for k, v, ver in rows]
