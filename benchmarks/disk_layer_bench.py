"""What the lazy disk costs the store (a script, not a test).

    python benchmarks/disk_layer_bench.py [--appends 3000] [--concurrency 16]
                                          [--payload 256] [--port 16900]

Runs the reference store (`python -m refserver.store`) twice in one run, on a plain
directory and then on a lazy disk mount (harness.lazydisk: FUSE, data kept in memory until
fsync), sends --appends durable Appends of --payload bytes from --concurrency tasks straight
to its gRPC API each time, and prints both rates, the store's commits (one fsync each) and
the ratio. Every process and mount made is removed at exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from harness.lazydisk import LazyDiskMount, fuse_refusal
from refserver.protos import Store_pb2, Store_pb2_grpc

READY = "Store is started on port"
READY_TIMEOUT_S = 60.0


def start_store(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        store = subprocess.Popen(
            [sys.executable, "-m", "refserver.store", "--data-dir", str(data_dir),
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while READY not in log_path.read_text(errors="replace"):
        if store.poll() is not None or time.monotonic() > deadline:
            stop_store(store)
            raise SystemExit(f"the store did not start; see {log_path}")
        time.sleep(0.02)
    return store


def stop_store(store: subprocess.Popen[bytes]) -> None:
    if store.poll() is None:
        store.send_signal(signal.SIGTERM)
        try:
            store.wait(timeout=15)
        except subprocess.TimeoutExpired:
            store.kill()
            store.wait()


async def drive(port: int, appends: int, concurrency: int, payload: bytes) -> float:
    """Appends/s of `appends` durable Appends from `concurrency` tasks."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = Store_pb2_grpc.StoreStub(channel)
        await stub.Append(Store_pb2.AppendReq(log_id=1, payload=payload, durable=True))
        left = appends

        async def worker(log_id: int) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.Append(Store_pb2.AppendReq(log_id=log_id, payload=payload,
                                                      durable=True))

        began = time.monotonic()
        await asyncio.gather(*(worker(1 + i % 4) for i in range(concurrency)))
        return appends / (time.monotonic() - began)


def commits(log_path: Path) -> str:
    found = re.search(r"appends=(\d+) commits=(\d+)", log_path.read_text(errors="replace"))
    return f"{found[1]} appends in {found[2]} commits" if found else "no stats line"


def measure(label: str, data_dir: Path, args: argparse.Namespace, workdir: Path) -> float:
    log_path = workdir / f"store-{label}.log"
    store = start_store(data_dir, args.port, log_path)
    try:
        rate = asyncio.run(drive(args.port, args.appends, args.concurrency,
                                 b"x" * args.payload))
    finally:
        stop_store(store)
    print(f"{label:>10}: {rate:8.0f} appends/s  ({commits(log_path)})", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--payload", type=int, default=256)
    parser.add_argument("--port", type=int, default=16900)
    args = parser.parse_args()
    reason = fuse_refusal()
    if reason:
        print(f"disk_layer_bench: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="disk-layer-bench-") as tmp:
        workdir = Path(tmp)
        print(f"{args.appends} durable store appends of {args.payload} B from "
              f"{args.concurrency} tasks", flush=True)
        plain = measure("plain", workdir / "plain", args, workdir)
        with LazyDiskMount(workdir / "backing", workdir / "lazy") as disk:
            lazy = measure("lazy disk", disk.mount, args, workdir)
            calls = disk.control.status()["calls"]
        print(f"     ratio: {lazy / plain:.2f} (lazy disk / plain); the disk served "
              + ", ".join(f"{n} {op}" for op, n in sorted(calls.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
