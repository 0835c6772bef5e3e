"""The lazy disk: a FUSE filesystem that loses what was not fsynced, and injects IO faults.

A passthrough over a real backing directory (mfusepy over libfuse3: ctypes, no compiler)
whose file data stays in memory until fsync/fdatasync of that file; `lose-unsynced` drops
it, as a power loss does. Its control channel also sets per-operation latency and errno
faults. The `disk` nemesis family (harness.nemesis.disk) mounts one under the store's data
directory when a cluster is started with `disk=True`.

* `fs`: the volatile layer and the fault table (no FUSE: testable on its own);
* `ops`: the FUSE operations; `__main__`: the process (`python -m harness.lazydisk`);
* `control`: the control channel (server, `DiskControl` client, shell command);
* `mounts`: whether FUSE is here (`fuse_refusal`), finding and removing mounts,
  `LazyDiskMount`.
"""

from harness.lazydisk.control import DiskControl, DiskControlError
from harness.lazydisk.mounts import (
    LazyDiskError,
    LazyDiskMount,
    fuse_refusal,
    lazydisk_mounts,
    unmount_under,
)

__all__ = [
    "DiskControl",
    "DiskControlError",
    "LazyDiskError",
    "LazyDiskMount",
    "fuse_refusal",
    "lazydisk_mounts",
    "unmount_under",
]
