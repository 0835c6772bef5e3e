"""The store's own defect, fsync-lie, measured on the lazy disk; and its `--defect` flag.

The engine appends and is answered; then the disk loses what was not fsynced. Healthy, every
answered append is still there; with fsync-lie the answered appends are gone while the
metadata written before them (a CAS'd key) is kept: the lie is about appends only.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lazydisk import LazyDiskMount, fuse_refusal
from refserver.store.engine import StoreEngine

APPENDS = 30
LOG_ID = 7


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[LazyDiskMount]:
    reason = fuse_refusal()
    if reason:
        pytest.skip(reason)
    with LazyDiskMount(tmp_path / "backing", tmp_path / "mnt") as mount:
        yield mount


# Runs in a process of its own that dies by kill -9 right after the last answer, as a
# crashing store does: no close, no final checkpoint, its page cache left behind.
WRITER = """
import asyncio, os, sys
from pathlib import Path
from refserver.store.engine import StoreEngine

async def main():
    engine = StoreEngine(Path(sys.argv[1]), fsync=sys.argv[2] == "fsync")
    engine.open()
    engine.start()
    ok, _ = await engine.meta_put("streams/s", b"meta", 0)
    assert ok
    for n in range(int(sys.argv[3])):
        await engine.append(int(sys.argv[4]), f"entry-{n}".encode(), durable=True)
        print("answered", n, flush=True)
    os.kill(os.getpid(), 9)

asyncio.run(main())
"""


def answered_appends(data_dir: Path, fsync: bool) -> int:
    """Write a metadata key, append APPENDS entries (each answered), then die by kill -9."""
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(data_dir), "fsync" if fsync else "fsync-lie",
         str(APPENDS), str(LOG_ID)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    return done.stdout.count("answered")


async def after_restart(data_dir: Path) -> tuple[int, bytes | None]:
    engine = StoreEngine(data_dir)
    engine.open()
    engine.start()
    try:
        read = await engine.read(LOG_ID, 1, 0, 1000)
        meta = await engine.meta_get("streams/s")
        return len(read.entries), None if meta is None else meta[0]
    finally:
        await engine.close()


@pytest.mark.parametrize("fsync", [True, False], ids=["healthy", "fsync-lie"])
def test_answered_appends_after_a_power_loss(disk: LazyDiskMount, fsync: bool) -> None:
    data = disk.mount / "store"
    answered = answered_appends(data, fsync)
    lost = disk.control.lose_unsynced()
    entries, meta = asyncio.run(after_restart(data))
    assert answered == APPENDS
    assert meta == b"meta"  # metadata is fsynced either way
    if fsync:
        assert entries == APPENDS, lost
    else:
        assert entries == 0, lost  # every answered append was only in the page cache


def test_store_refuses_an_unknown_defect_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "refserver.store", "--data-dir", str(tmp_path), "--port", "1",
         "--defect", "make-it-fast"], capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("refserver.store: error:")
    assert "make-it-fast" in lines[0] and "fsync-lie" in lines[0]


def test_fsync_lie_survives_a_kill_9_alone(disk: LazyDiskMount) -> None:
    """Why kill-store misses the defect: the page cache outlives the store process."""
    data = disk.mount / "store"
    answered = answered_appends(data, fsync=False)
    entries, meta = asyncio.run(after_restart(data))
    assert (entries, meta) == (answered, b"meta") and answered == APPENDS
