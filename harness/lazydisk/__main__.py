"""`python -m harness.lazydisk --backing DIR --mount DIR --control SOCKET [--seed N]`.

Mounts the lazy disk (harness.lazydisk.fs) at --mount over --backing, serves its control
channel on --control, and logs "lazydisk is mounted at DIR" once the kernel talks to it.
SIGTERM / SIGINT unmount it and exit. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

PROG = "harness.lazydisk"
READY = "lazydisk is mounted at"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m {PROG} --help`)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog=f"python -m {PROG}",
                     description="A FUSE passthrough whose file data is lost unless fsynced.")
    parser.add_argument("--backing", required=True, help="the real directory holding the data")
    parser.add_argument("--mount", required=True, help="the empty directory to mount it at")
    parser.add_argument("--control", required=True, help="unix socket path of the control channel")
    parser.add_argument("--seed", type=int, default=0, help="seed of probabilistic errno faults")
    args = parser.parse_args(argv)
    for name in ("backing", "mount"):
        if not os.path.isdir(getattr(args, name)):
            parser.error(f"--{name} {getattr(args, name)} is not a directory")
    if os.path.realpath(args.backing) == os.path.realpath(args.mount):
        parser.error("--backing and --mount must be different directories")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        from harness.lazydisk.mounts import fuse_refusal

        reason = fuse_refusal(install=False)
        if reason:
            raise UsageError(reason)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level="WARNING", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import mfusepy

    from harness.lazydisk.control import serve
    from harness.lazydisk.fs import LazyDiskState
    from harness.lazydisk.ops import LazyDiskOps

    state = LazyDiskState(args.backing, seed=args.seed)
    control = serve(state, args.control)
    mount = os.path.realpath(args.mount)

    mounted: list[bool] = []

    def ready() -> None:
        mounted.append(True)
        print(f"{READY} {mount} over {state.backing} (control {args.control})", flush=True)

    try:
        # No kernel caching of attributes or names: after a power loss (lose-unsynced) the
        # next stat must see the size the backing file has, not one the kernel remembers.
        mfusepy.FUSE(LazyDiskOps(state, ready), mount, raw_fi=True, foreground=True,
                     fsname="lazydisk", subtype="lazydisk", default_permissions=True,
                     allow_other=os.geteuid() == 0, attr_timeout=0, entry_timeout=0,
                     negative_timeout=0, max_threads=16)
    except RuntimeError as exc:
        # libfuse's loop ends with a nonzero status when a signal stops it: after a mount
        # that is the normal way out.
        if not mounted:
            print(f"{PROG}: error: cannot mount at {mount}: libfuse said {exc}",
                  file=sys.stderr)
            return 1
    finally:
        control.close()
        if os.path.exists(args.control):
            os.unlink(args.control)
    print(f"lazydisk unmounted {mount}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
