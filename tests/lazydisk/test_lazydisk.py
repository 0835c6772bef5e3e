"""The lazy disk measured doing what it says, through a real FUSE mount and real writers.

What was fsynced survives `lose-unsynced` and what was only written is gone (for plain files
and for SQLite: WAL + synchronous=FULL keeps committed transactions, synchronous=OFF loses
them); a kill -9 of the writer keeps unsynced data (the page cache survives a process crash);
errno faults reach the writer on the chosen op only, for the calls asked; latency is seen by
the caller; a lazy disk killed with SIGKILL leaves a dead mount that the sweep removes.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.lazydisk import LazyDiskMount, fuse_refusal, lazydisk_mounts, unmount_under
from harness.lazydisk.control import DiskControl, DiskControlError
from harness.lazydisk.fs import PAGE, LazyDiskState
from harness.runtimes import ExecOutputLost

# Latency asked of fsync, and how far above it a measured fsync may land on a busy machine.
FSYNC_LATENCY_MS = 300
LATENCY_SLACK_S = 2.0
# A plain fsync through the layer, unfaulted, stays well under the latency asked.
PLAIN_FSYNC_BOUND_S = FSYNC_LATENCY_MS / 1000


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[LazyDiskMount]:
    reason = fuse_refusal()
    if reason:
        pytest.skip(reason)
    mount = LazyDiskMount(tmp_path / "backing", tmp_path / "mnt", seed=7)
    with mount:
        yield mount


def _write(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_fsynced_file_survives_and_unsynced_file_is_gone(disk: LazyDiskMount) -> None:
    synced, unsynced = disk.mount / "synced", disk.mount / "unsynced"
    _write(synced, b"kept" * 3000, sync=True)
    _write(unsynced, b"lost" * 3000, sync=False)
    # Before the loss both read back whole, as from a page cache; the backing file of the
    # unsynced one is still empty.
    assert unsynced.read_bytes() == b"lost" * 3000
    assert (disk.backing / "unsynced").stat().st_size == 0
    lost = disk.control.lose_unsynced()
    assert lost == {"files": 1, "dirty_bytes": 3 * PAGE}
    assert synced.read_bytes() == b"kept" * 3000
    # The name was durable at once, the data was not: an empty file, as ext4 leaves it.
    assert unsynced.exists() and unsynced.read_bytes() == b""


def test_unsynced_overwrite_and_truncate_roll_back_to_the_synced_content(
    disk: LazyDiskMount,
) -> None:
    path = disk.mount / "log"
    _write(path, b"A" * 10_000, sync=True)
    with path.open("r+b") as f:
        f.seek(5_000)
        f.write(b"B" * 8_000)
        f.truncate(9_000)
    assert path.read_bytes() == b"A" * 5_000 + b"B" * 4_000
    disk.control.lose_unsynced()
    assert path.read_bytes() == b"A" * 10_000


def test_kill_9_of_the_writer_keeps_unsynced_data(disk: LazyDiskMount) -> None:
    path = disk.mount / "crashed-writer"
    code = (f"import os; fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT, 0o644); "
            "os.write(fd, b'written' * 100); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"written" * 100  # the page cache outlives the process
    disk.control.lose_unsynced()
    assert path.read_bytes() == b""  # a power loss does not


def _sqlite_rows(db: Path) -> int:
    connection = sqlite3.connect(db, isolation_level=None)
    # The checkpoint the last connection runs at close must not fsync: reading must not
    # make durable what the writer left volatile.
    connection.execute("PRAGMA synchronous=OFF")
    try:
        return int(connection.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the table itself was never made durable
    finally:
        connection.close()


def _sqlite_in_a_process_killed_after(db: Path, synchronous: str, rows: int) -> None:
    # A store process that commits and then dies by kill -9: no close, no final checkpoint.
    code = (f"import os, sqlite3\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            f"c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous={synchronous}')\n"
            f"c.execute('CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)')\n"
            f"for k in range({rows}): c.execute('INSERT INTO t VALUES (?, ?)', (k, 'x'))\n"
            f"os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == -signal.SIGKILL


def test_sqlite_wal_full_keeps_committed_transactions(disk: LazyDiskMount) -> None:
    db = disk.mount / "full.sqlite3"
    _sqlite_in_a_process_killed_after(db, "FULL", 50)
    disk.control.lose_unsynced()
    assert _sqlite_rows(db) == 50


def test_sqlite_synchronous_off_loses_committed_transactions(disk: LazyDiskMount) -> None:
    db = disk.mount / "off.sqlite3"
    _sqlite_in_a_process_killed_after(db, "OFF", 50)
    assert _sqlite_rows(db) == 50  # a process crash keeps them: they are in the page cache
    disk.control.lose_unsynced()
    assert _sqlite_rows(db) == 0


def test_eio_reaches_the_writer_on_the_chosen_op_for_the_calls_asked(
    disk: LazyDiskMount,
) -> None:
    path = disk.mount / "eio"
    disk.control.set_fault("write", errno="EIO", count=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(2):
            with pytest.raises(OSError) as raised:
                os.write(fd, b"x")
            assert raised.value.errno == errno.EIO
        assert os.write(fd, b"ok") == 2  # the third call works again
        os.fsync(fd)  # another op is untouched
    finally:
        os.close(fd)
    assert path.read_bytes() == b"ok"
    status = disk.control.status()
    assert status["failed"] == {"write": 2}


def test_enospc_on_fsync_and_probability_faults(disk: LazyDiskMount) -> None:
    path = disk.mount / "enospc"
    disk.control.set_fault("fsync", errno="ENOSPC")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        with pytest.raises(OSError) as raised:
            os.fsync(fd)
        assert raised.value.errno == errno.ENOSPC
        disk.control.clear()
        os.fsync(fd)
    finally:
        os.close(fd)
    # With a probability the seeded draw fails some calls and not others.
    disk.control.set_fault("read", errno="EIO", probability=0.5, seed=1)
    outcomes = []
    for _ in range(40):
        try:
            with path.open("rb") as f:
                outcomes.append(f.read() == b"data")
        except OSError as exc:
            assert exc.errno == errno.EIO
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35, outcomes


def test_fsync_latency_is_seen_by_the_caller(disk: LazyDiskMount) -> None:
    path = disk.mount / "slow"

    def timed_fsync() -> float:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * 100)
            began = time.monotonic()
            os.fsync(fd)
            return time.monotonic() - began
        finally:
            os.close(fd)

    plain = timed_fsync()
    disk.control.set_fault("fsync", latency_ms=FSYNC_LATENCY_MS)
    slow = timed_fsync()
    disk.control.set_fault("fsync", latency_ms=0)
    assert plain < PLAIN_FSYNC_BOUND_S, plain
    assert FSYNC_LATENCY_MS / 1000 <= slow < FSYNC_LATENCY_MS / 1000 + LATENCY_SLACK_S, slow
    assert disk.control.status()["delayed_ms"] == {"fsync": FSYNC_LATENCY_MS}


def test_control_refuses_bad_requests_in_one_line(disk: LazyDiskMount) -> None:
    with pytest.raises(DiskControlError, match="unknown op 'rename'"):
        disk.control.set_fault("rename", latency_ms=5)
    with pytest.raises(DiskControlError, match="unknown errno 'EBADNESS'"):
        disk.control.set_fault("write", errno="EBADNESS")
    with pytest.raises(DiskControlError, match="does not answer"):
        DiskControl(str(disk.mount.parent / "nothing.sock")).status()


def _local_exec(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """What a runtime's exec gives: the command's exit status and its stdout and stderr in
    one text ("python" is this interpreter here)."""
    done = subprocess.run([sys.executable, *argv[1:]], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    return done.returncode, done.stdout


def test_control_through_an_exec_reads_the_reply_out_of_mixed_output(
    disk: LazyDiskMount,
) -> None:
    # The command line the harness runs in a store's container, here through a local exec:
    # the reply stays readable when stderr lands mid-line, as a docker exec gave it once.
    remote = DiskControl(disk.control.socket_path, via=_local_exec)
    remote.set_fault("fsync", latency_ms=3)
    assert set(remote.status()["faults"]) == {"fsync"}
    assert remote.status() == disk.control.status()

    def interleaved(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
        code, output = _local_exec(argv, timeout_s)
        return code, output.rstrip("\n") + "<frozen runpy>:128: RuntimeWarning: ...\n"

    assert set(DiskControl(disk.control.socket_path, via=interleaved).status()["faults"]) == {
        "fsync"}
    remote.clear()
    assert remote.status()["faults"] == {}
    with pytest.raises(DiskControlError, match="unknown op 'rename'"):
        remote.set_fault("rename", latency_ms=5)


def test_an_exec_that_lost_its_output_is_asked_again_only_when_that_is_harmless(
    disk: LazyDiskMount,
) -> None:
    # A docker exec under load now and then ends with exit 0 and nothing read (the runtime
    # raises ExecOutputLost): status, set and clear are asked again; lose-unsynced (a power
    # loss) never is.
    calls: list[str] = []

    def loses_first(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
        calls.append(argv[-2])
        if len(calls) == 1:
            raise ExecOutputLost("the output of the control command did not come back whole")
        return _local_exec(argv, timeout_s)

    assert DiskControl(disk.control.socket_path, via=loses_first).status() == \
        disk.control.status()
    assert calls == ["status", "status"]
    calls.clear()
    with pytest.raises(DiskControlError, match="whether the lazy disk did lose-unsynced is "
                       "unknown: .*did not come back whole"):
        DiskControl(disk.control.socket_path, via=loses_first).lose_unsynced()
    assert calls == ["lose-unsynced"]


def test_a_killed_lazy_disk_leaves_a_dead_mount_the_sweep_removes(tmp_path: Path) -> None:
    reason = fuse_refusal()
    if reason:
        pytest.skip(reason)
    mount = LazyDiskMount(tmp_path / "backing", tmp_path / "mnt").start()
    try:
        assert mount.process is not None
        os.killpg(mount.process.pid, signal.SIGKILL)
        mount.process.wait(10)
        assert lazydisk_mounts(tmp_path) == [str(mount.mount)]
        with pytest.raises(OSError) as raised:
            os.listdir(mount.mount)
        assert raised.value.errno == errno.ENOTCONN
        assert unmount_under(tmp_path) == [str(mount.mount)]
        assert lazydisk_mounts(tmp_path) == []
    finally:
        mount.stop()


def test_bad_command_line_gives_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness.lazydisk", "--backing", str(tmp_path / "absent"),
         "--mount", str(tmp_path), "--control", str(tmp_path / "c.sock")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backing" in lines[0] and "is not a directory" in lines[0]


def test_volatile_state_alone_extends_with_zeros_after_a_cut(tmp_path: Path) -> None:
    """The layer without FUSE: a file cut and grown again reads zeros, not old bytes."""
    (tmp_path / "f").write_bytes(b"Z" * 3 * PAGE)
    state = LazyDiskState(str(tmp_path))
    fd = os.open(tmp_path / "f", os.O_RDWR)
    try:
        state.truncate("/f", fd, 100)
        state.write("/f", fd, b"end", 2 * PAGE)
        view = state.read("/f", fd, 3 * PAGE, 0)
        assert view == b"Z" * 100 + bytes(2 * PAGE - 100) + b"end"
        state.fsync("/f", fd)
        assert (tmp_path / "f").read_bytes() == view
    finally:
        os.close(fd)
