"""Whether this machine can run the lazy disk, the lazy disks mounted under a folder, their
removal, and `LazyDiskMount`: one lazy disk process, started and always unmounted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import HarnessError

FSTYPE = "fuse.lazydisk"
READY_TIMEOUT_S = 20.0  # one interpreter start plus a mount, on a loaded 2-core machine
STOP_GRACE_S = 5.0


class LazyDiskError(HarnessError):
    """The lazy disk could not be started or stopped; the message says why."""


def fuse_refusal(install: bool = True) -> str | None:
    """Why the lazy disk cannot run here (one line saying what to do), or None.

    Needs the kernel's FUSE device, `fusermount3` (Debian `fuse3`, installed on first use as
    root) and libfuse3, which mfusepy loads through ctypes (no compiler needed).
    """
    if not os.path.exists("/dev/fuse"):
        return ("no /dev/fuse here: the kernel has no FUSE (modprobe fuse), or this container "
                "was started without --device /dev/fuse --cap-add SYS_ADMIN")
    if install:
        from harness.debian import ToolMissing, ensure_tools

        try:
            ensure_tools({"fusermount3": "fuse3"}, why="the lazy disk (disk faults)",
                         progress=lambda line: print(line, file=sys.stderr))
        except ToolMissing as exc:
            return str(exc)
    elif shutil.which("fusermount3") is None:
        return "the lazy disk needs fusermount3: install with `apt-get install fuse3`"
    try:
        import mfusepy
    except ImportError as exc:
        return f"the lazy disk needs mfusepy (`pip install mfusepy`): {exc}"
    except OSError as exc:  # mfusepy found no libfuse
        return f"the lazy disk needs libfuse3 (`apt-get install fuse3`): {exc}"
    if mfusepy.fuse_version_major != 3:
        return f"the lazy disk needs libfuse 3, found {mfusepy.fuse_version_major}"
    return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def lazydisk_mounts(under: str | Path | None = None) -> list[str]:
    """Mount points of lazy disks (also dead ones) at or under `under` (all when None)."""
    found = []
    root = None if under is None else os.path.realpath(under)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        before, _, after = line.partition(" - ")
        if not after.startswith(FSTYPE + " "):
            continue
        point = _unescape(before.split()[4])
        if root is None or point == root or point.startswith(root.rstrip("/") + "/"):
            found.append(point)
    return found


def unmount(point: str) -> None:
    """Lazily unmount one mount point (its process may be dead: the mount is then stale)."""
    for argv in (["fusermount3", "-u", "-z", point], ["umount", "-l", point]):
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode == 0 or point not in lazydisk_mounts(point):
            return
    if point in lazydisk_mounts(point):
        raise LazyDiskError(f"cannot unmount the lazy disk at {point}: run "
                            f"`fusermount3 -u -z {point}` as its owner or root")


def unmount_under(folder: str | Path) -> list[str]:
    """Unmount every lazy disk at or under `folder` (a teardown or a sweep); returns them."""
    points = sorted(lazydisk_mounts(folder), key=len, reverse=True)
    for point in points:
        with contextlib.suppress(LazyDiskError, subprocess.TimeoutExpired):
            unmount(point)
    return points


def disk_argv(python: str, backing: str, mount: str, control: str, seed: int = 0) -> list[str]:
    return [python, "-m", "harness.lazydisk", "--backing", backing, "--mount", mount,
            "--control", control, "--seed", str(seed)]


class LazyDiskMount:
    """One lazy disk process over `backing` at `mount` (created if absent), for tests and
    benchmarks; the cluster runs its own through the target (harness.targets.reference).

    `start()` returns once it is mounted; `stop()` (also on `with` exit, on failure and on
    Ctrl-C) terminates it and unmounts whatever is left.
    """

    def __init__(self, backing: Path, mount: Path, log_path: Path | None = None,
                 seed: int = 0) -> None:
        self.backing = backing
        self.mount = mount
        self.control_path = str(backing.parent / f".{mount.name}.lazydisk.sock")
        self.log_path = log_path or backing.parent / f"{mount.name}.lazydisk.log"
        self.seed = seed
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LazyDiskMount:
        from harness.lazydisk.__main__ import READY
        from harness.lazydisk.control import DiskControl

        reason = fuse_refusal()
        if reason:
            raise LazyDiskError(reason)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        argv = disk_argv(sys.executable, str(self.backing), str(self.mount), self.control_path,
                         self.seed)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log_path.read_text(errors="replace").strip()
                self.stop()
                raise LazyDiskError(f"the lazy disk did not mount at {self.mount} within "
                                    f"{READY_TIMEOUT_S:.0f}s: {text[-500:] or 'no output'}")
            time.sleep(0.05)
        self.control = DiskControl(self.control_path)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_GRACE_S)
        unmount_under(self.mount)

    def __enter__(self) -> LazyDiskMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
