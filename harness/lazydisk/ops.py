"""The FUSE operations of the lazy disk (mfusepy's path-based API over libfuse3).

Each operation maps a mount path onto the backing directory; file data goes through
`LazyDiskState` (harness.lazydisk.fs), names straight to the backing directory. Every
operation a fault may be set on asks the fault table first, so a latency or an errno reaches
the application exactly where it asked for it.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import mfusepy

from harness.lazydisk.fs import LazyDiskState, is_shared_memory

log = logging.getLogger("harness.lazydisk")

_STAT_KEYS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
              "st_uid", "st_blocks", "st_atime_ns", "st_ctime_ns", "st_mtime_ns")


class LazyDiskOps(mfusepy.Operations):
    """Passthrough operations with volatile file data (see harness.lazydisk.fs)."""

    use_ns = True

    def __init__(self, state: LazyDiskState, on_ready: Any = None) -> None:
        self.state = state
        self.on_ready = on_ready

    def init(self, path: str) -> None:
        if self.on_ready is not None:
            self.on_ready()

    # -- attributes ---------------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.lstat(self.state.real(path))
        attrs = {key: getattr(st, key) for key in _STAT_KEYS if hasattr(st, key)}
        size = self.state.size(path)
        if size is not None:
            attrs["st_size"] = size
            attrs["st_blocks"] = (size + 511) // 512
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self.state.real(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self.state.real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self.state.real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self.state.real(path))
        else:
            os.utime(self.state.real(path), ns=times)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.state.real(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    # -- names (durable at once) ----------------------------------------------------------
    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self.state.real(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self.state.real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self.state.real(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self.state.real(path))
        self.state.forget(path)
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self.state.real(old), self.state.real(new))
        self.state.renamed(old, new)
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self.state.real(target))
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self.state.real(path))

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> int:
        fd = os.open(self.state.real(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    # -- files ----------------------------------------------------------------------------
    def _open_backing(self, path: str, flags: int, mode: int = 0o644) -> int:
        # Read-write whatever the caller asked: fsync needs a writable descriptor. O_TRUNC
        # and O_APPEND are the volatile layer's to apply, never the backing file's.
        keep = flags & (os.O_CREAT | os.O_EXCL)
        try:
            return os.open(self.state.real(path), os.O_RDWR | keep, mode)
        except PermissionError:
            return os.open(self.state.real(path), (flags & os.O_ACCMODE) | keep, mode)

    def _file_info(self, path: str, fi: Any, fd: int) -> None:
        fi.fh = fd
        # direct_io: no kernel page cache, so reads always come from the volatile view;
        # mapped shared memory needs the cache (module docstring of harness.lazydisk.fs).
        fi.direct_io = 0 if is_shared_memory(path) else 1
        fi.keep_cache = 0

    def open(self, path: str, fi: Any) -> int:
        self.state.faults.check("open")
        fd = self._open_backing(path, fi.flags)
        if fi.flags & os.O_TRUNC:
            self.state.truncate(path, fd, 0)
        self._file_info(path, fi, fd)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self.state.faults.check("create")
        fd = self._open_backing(path, fi.flags | os.O_CREAT, mode)
        if fi.flags & os.O_TRUNC:
            self.state.truncate(path, fd, 0)
        self._file_info(path, fi, fd)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        self.state.faults.check("read")
        return self.state.read(path, fh.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        self.state.faults.check("write")
        if fh.flags & os.O_APPEND:
            offset = self.getattr(path)["st_size"]
        return self.state.write(path, fh.fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self.state.faults.check("truncate")
        if fh is not None and fh.fh:
            self.state.truncate(path, fh.fh, length)
            return 0
        fd = self._open_backing(path, os.O_RDWR)
        try:
            self.state.truncate(path, fd, length)
        finally:
            os.close(fd)
        return 0

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        self.state.faults.check("fsync")
        self.state.fsync(path, fh.fh)
        return 0

    def flush(self, path: str, fh: Any) -> int:
        return 0

    def release(self, path: str, fh: Any) -> int:
        os.close(fh.fh)
        return 0
