"""The lazy disk: a passthrough filesystem whose file data is volatile until fsync.

Model (what a machine's page cache and a power loss do to an application's files):

* Names are durable at once: create, mkdir, unlink, rename, rmdir go straight to the backing
  directory (a journaling filesystem commits them within seconds anyway). A file created and
  written but never fsynced therefore comes back after a power loss with its name and size 0,
  as ext4 famously does.
* File data and sizes are volatile: every write and truncate is kept in memory, per file, as
  dirty 4 KiB pages, the current size and the lowest size it was cut to since its last sync.
  Reads see the volatile state over the backing file, as readers see the page cache.
* fsync / fdatasync of a file writes its pages and size to the backing file and fsyncs it.
  Closing a file does not (close is not a durability point on Linux either).
* `lose_unsynced()` drops every volatile state at once: the power loss.

SQLite's wal-index (`*-shm`) is mapped shared memory, not data: it is passed through as is
(and is the only file the kernel may cache), because the kernel maps only cached files and
SQLite rebuilds it from the WAL when the first connection opens the database.

Faults: per operation (read, write, fsync, ...) a latency in ms, and an errno (EIO, ENOSPC,
...) returned for the next N calls or with a probability. Every other file is opened with
direct_io and attributes are never cached by the kernel, so every read, write and size the
application sees comes from here (and after `lose_unsynced` nothing stale remains).
"""

from __future__ import annotations

import errno as errno_module
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PAGE = 4096
# The operations a fault may be set on; "fsync" covers fdatasync too.
FAULT_OPS = ("read", "write", "fsync", "open", "create", "truncate")
# The errnos the control accepts by name.
ERRNOS = {"EIO": errno_module.EIO, "ENOSPC": errno_module.ENOSPC, "EROFS": errno_module.EROFS,
          "EDQUOT": errno_module.EDQUOT}


class FaultSpecError(ValueError):
    """A fault setting that makes no sense; the message says which and what is accepted."""


@dataclass
class OpFault:
    """The fault on one operation: a delay, and an errno for `count` calls or by chance."""

    latency_ms: int = 0
    errno: int = 0
    count: int = 0  # with errno: fail the next `count` calls (0: use probability)
    probability: float = 0.0  # with errno and count 0: fail each call with this chance


@dataclass
class FaultTable:
    """The IO faults in force, and what they did (counters the tests and history read)."""

    seed: int = 0
    faults: dict[str, OpFault] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    delayed_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()

    def set(self, op: str, *, latency_ms: int | None = None, errno: int | str | None = None,
            count: int | None = None, probability: float | None = None,
            seed: int | None = None) -> None:
        if op not in FAULT_OPS:
            raise FaultSpecError(f"unknown op {op!r}; faults go on: {', '.join(FAULT_OPS)}")
        with self.lock:
            fault = self.faults.setdefault(op, OpFault())
            if latency_ms is not None:
                if latency_ms < 0:
                    raise FaultSpecError(f"latency_ms must be >= 0, got {latency_ms}")
                fault.latency_ms = int(latency_ms)
            if errno in (0, "none"):
                fault.errno = 0  # this op's errno fault removed, its latency kept
            elif errno is not None:
                fault.errno = _errno(errno)
                fault.count = int(count or 0)
                fault.probability = 1.0 if probability is None and not count else float(
                    probability or 0.0)
                if fault.count < 0 or not 0.0 <= fault.probability <= 1.0:
                    raise FaultSpecError("count must be >= 0 and probability within 0..1")
            if seed is not None:
                self.rng.seed(seed)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def check(self, op: str) -> None:
        """Count the call; sleep its latency; raise its errno when it is due to fail."""
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            fault = self.faults.get(op)
            if fault is None:
                return
            delay = fault.latency_ms / 1000
            fail = 0
            if fault.errno:
                if fault.count > 0:
                    fault.count -= 1
                    fail = fault.errno
                    if fault.count == 0:
                        fault.errno = 0  # used up: the op works again
                elif fault.probability > 0 and self.rng.random() < fault.probability:
                    fail = fault.errno
            if fail:
                self.failed[op] = self.failed.get(op, 0) + 1
            if delay:
                self.delayed_ms[op] = self.delayed_ms.get(op, 0.0) + fault.latency_ms
        if delay:
            time.sleep(delay)  # outside the lock: other ops go on meanwhile
        if fail:
            raise OSError(fail, os.strerror(fail))

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "faults": {op: vars(f).copy() for op, f in self.faults.items()},
                "calls": dict(self.calls), "failed": dict(self.failed),
                "delayed_ms": dict(self.delayed_ms),
            }


def _errno(value: int | str) -> int:
    if isinstance(value, str):
        if value.upper() not in ERRNOS:
            raise FaultSpecError(f"unknown errno {value!r}; known: {', '.join(ERRNOS)}")
        return ERRNOS[value.upper()]
    if value <= 0:
        raise FaultSpecError(f"errno must be positive, got {value}")
    return int(value)


@dataclass
class Volatile:
    """What a file holds in memory only: its size, dirty pages, and the backing bytes that no
    longer count (at or past `floor`, the smallest size it was cut to since its last sync)."""

    size: int
    floor: int
    pages: dict[int, bytearray] = field(default_factory=dict)

    def dirty_bytes(self) -> int:
        return len(self.pages) * PAGE


def is_shared_memory(path: str) -> bool:
    """SQLite's wal-index, which it maps shared (module docstring)."""
    return path.endswith("-shm")


class LazyDiskState:
    """The volatile layer over a backing directory; every method is thread-safe.

    The FUSE operations (harness.lazydisk.ops) and the control channel call these.
    """

    def __init__(self, backing: str, seed: int = 0) -> None:
        self.backing = os.path.realpath(backing)
        self.files: dict[str, Volatile] = {}
        self.lock = threading.RLock()
        self.faults = FaultTable(seed)
        self.synced_files = 0
        self.lost_files = 0
        self.lost_bytes = 0

    def real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    # -- the volatile view ------------------------------------------------------------
    def _state(self, path: str, fd: int) -> Volatile:
        state = self.files.get(path)
        if state is None:
            size = os.fstat(fd).st_size
            state = self.files[path] = Volatile(size=size, floor=size)
        return state

    def size(self, path: str) -> int | None:
        with self.lock:
            state = self.files.get(path)
            return None if state is None else state.size

    def _page(self, state: Volatile, fd: int, index: int) -> bytearray:
        page = state.pages.get(index)
        if page is None:
            page = bytearray(self._backing_bytes(state, fd, index * PAGE, PAGE))
            page.extend(bytes(PAGE - len(page)))
            state.pages[index] = page
        return page

    @staticmethod
    def _backing_bytes(state: Volatile, fd: int, offset: int, size: int) -> bytes:
        """Backing bytes that still count (below `floor`), zeros elsewhere up to `size`."""
        valid = max(0, min(offset + size, state.floor) - offset)
        data = os.pread(fd, valid, offset) if valid else b""
        return data + bytes(size - len(data)) if len(data) < size else data

    def read(self, path: str, fd: int, size: int, offset: int) -> bytes:
        with self.lock:
            state = self.files.get(path)
            if state is None or is_shared_memory(path):
                return os.pread(fd, size, offset)
            end = min(offset + size, state.size)
            out = bytearray()
            at = offset
            while at < end:
                index, inner = divmod(at, PAGE)
                take = min(PAGE - inner, end - at)
                page = state.pages.get(index)
                if page is not None:
                    out += page[inner:inner + take]
                else:
                    out += self._backing_bytes(state, fd, at, take)
                at += take
            return bytes(out)

    def write(self, path: str, fd: int, data: bytes, offset: int) -> int:
        if is_shared_memory(path):
            return os.pwrite(fd, data, offset)
        with self.lock:
            state = self._state(path, fd)
            at, done = offset, 0
            while done < len(data):
                index, inner = divmod(at, PAGE)
                take = min(PAGE - inner, len(data) - done)
                page = self._page(state, fd, index)
                page[inner:inner + take] = data[done:done + take]
                at += take
                done += take
            state.size = max(state.size, offset + len(data))
            return len(data)

    def truncate(self, path: str, fd: int, length: int) -> None:
        if is_shared_memory(path):
            os.ftruncate(fd, length)
            return
        with self.lock:
            state = self._state(path, fd)
            state.size = length
            state.floor = min(state.floor, length)
            last, inner = divmod(length, PAGE)
            for index in [i for i in state.pages if i > last or (i == last and inner == 0)]:
                del state.pages[index]
            if inner and last in state.pages:
                state.pages[last][inner:] = bytes(PAGE - inner)

    def fsync(self, path: str, fd: int) -> None:
        """Make the file's volatile state durable: pages, then size, then fsync."""
        with self.lock:
            state = self.files.get(path)
            if state is not None:
                os.ftruncate(fd, state.floor)  # cut bytes that no longer count
                for index in sorted(state.pages):
                    start = index * PAGE
                    if start >= state.size:
                        continue
                    os.pwrite(fd, bytes(state.pages[index][: state.size - start]), start)
                os.ftruncate(fd, state.size)
            os.fsync(fd)
            if state is not None:
                del self.files[path]
                self.synced_files += 1

    # -- names -------------------------------------------------------------------------
    def forget(self, path: str) -> None:
        with self.lock:
            self.files.pop(path, None)

    def renamed(self, old: str, new: str) -> None:
        with self.lock:
            self.files.pop(new, None)
            moved = {p: s for p, s in self.files.items()
                     if p == old or p.startswith(old.rstrip("/") + "/")}
            for p, state in moved.items():
                del self.files[p]
                self.files[new + p[len(old):]] = state

    # -- power loss --------------------------------------------------------------------
    def lose_unsynced(self) -> dict[str, int]:
        """Drop every file's volatile state, as a power loss does; returns what was lost."""
        with self.lock:
            files = len(self.files)
            lost = sum(s.dirty_bytes() for s in self.files.values())
            self.files.clear()
            self.lost_files += files
            self.lost_bytes += lost
            return {"files": files, "dirty_bytes": lost}

    def status(self) -> dict[str, Any]:
        with self.lock:
            volatile = {p: {"size": s.size, "dirty_bytes": s.dirty_bytes()}
                        for p, s in sorted(self.files.items())}
            totals = {"synced_files": self.synced_files, "lost_files": self.lost_files,
                      "lost_bytes": self.lost_bytes}
        return {"backing": self.backing, "volatile": volatile, **totals,
                **self.faults.to_json()}
