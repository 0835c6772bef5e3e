"""Throughput and start-up figures of the reference server (a script, not a test).

    python benchmarks/refserver_bench.py [--nodes 3] [--records 20000] [--batch 100]
                                         [--concurrency 8] [--port-base 16800]

Starts a store and N `python -m refserver` nodes on 127.0.0.(40+i), then prints:
- launch → ready: seconds from process start to "Store/Server is started" per process,
  and until every node's DescribeCluster lists all N;
- appends/s through the official `hstreamdb` client: `append` calls of --batch records
  from --concurrency tasks over a 4-shard stream, with and without gzip, and the
  buffered producer;
- the store's group-commit figures (appends per fsync) from its stop-time stats line.
Every process started is stopped at exit, also on Ctrl-C or failure.
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
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from hstreamdb import insecure_client


class Process:
    def __init__(self, name: str, argv: list[str], log_path: Path, ready: str) -> None:
        self.name, self.argv, self.log_path, self.ready = name, argv, log_path, ready
        self.started = time.monotonic()
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, seconds: float = 60) -> float:
        while self.ready not in self.log_path.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() - self.started > seconds:
                raise SystemExit(
                    f"{self.name} did not start (exit {self.popen.poll()}); see {self.log_path}"
                )
            time.sleep(0.01)
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_cluster(workdir: Path, nodes: int, port_base: int, processes: list[Process]) -> None:
    store_port = port_base
    store = Process(
        "store",
        [sys.executable, "-m", "refserver.store", "--data-dir", str(workdir / "data"),
         "--port", str(store_port)],
        workdir / "store.log",
        "Store is started on port",
    )  # fmt: skip
    processes.append(store)
    print(f"store launch -> ready: {store.wait_ready():.2f} s")
    seed = f"127.0.0.41:{port_base + 2}"
    started = time.monotonic()
    for i in range(1, nodes + 1):
        host = f"127.0.0.{40 + i}"
        node = Process(
            f"node {i}",
            [sys.executable, "-m", "refserver", "--server-id", str(i), "--bind-address", host,
             "--port", str(port_base + 1), "--internal-port", str(port_base + 2),
             "--seed-nodes", seed, "--store", f"127.0.0.1:{store_port}",
             "--probe-interval-ms", "500", "--roundtrip-timeout-ms", "200",
             "--gossip-interval-ms", "200"],
            workdir / f"node{i}.log",
            "Server is started on port",
        )  # fmt: skip
        processes.append(node)
        print(f"node {i} launch -> ready: {node.wait_ready():.2f} s")
    for i in range(1, nodes + 1):
        with grpc.insecure_channel(f"127.0.0.{40 + i}:{port_base + 1}") as channel:
            stub = api_grpc.HStreamApiStub(channel)
            while len(stub.DescribeCluster(empty_pb2.Empty(), timeout=5).serverNodes) < nodes:
                if time.monotonic() - started > 60:
                    raise SystemExit(f"cluster did not form in 60 s; logs in {workdir}")
                time.sleep(0.05)
    print(f"cluster of {nodes} launch -> all agree: {time.monotonic() - started:.2f} s")


async def appends(host: str, port: int, records: int, batch: int, concurrency: int) -> None:
    async with await insecure_client(host=host, port=port) as client:
        for compression in (None, "gzip"):
            stream = f"bench-{compression or 'none'}"
            await client.create_stream(stream, shard_count=4)
            batches = records // batch
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(batches):
                queue.put_nowait(i)

            async def worker(
                stream: str = stream,
                compression: str | None = compression,
                queue: asyncio.Queue[int] = queue,
            ) -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    values = [b"x" * 100 + b"%d" % j for j in range(batch)]
                    await client.append(stream, values, key=f"k{i % 64}", compresstype=compression)

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            print(
                f"append ({compression or 'no compression'}, {batch}/batch, {concurrency} tasks): "
                f"{batches * batch / elapsed:,.0f} records/s, {batches / elapsed:,.0f} batches/s"
            )

        await client.create_stream("bench-buffered", shard_count=4)
        producer = client.new_producer(size_trigger=16 * 1024, time_trigger=0.05, workers=4)
        started = time.monotonic()
        for i in range(records):
            await producer.append("bench-buffered", b"y" * 100, key=f"k{i % 64}")
        await producer.wait_and_close()
        elapsed = time.monotonic() - started
        print(f"buffered producer (16 KiB batches): {records / elapsed:,.0f} records/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port-base", type=int, default=16800)
    args = parser.parse_args()
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="refserver-bench-") as tmp:
        try:
            start_cluster(Path(tmp), args.nodes, args.port_base, processes)
            asyncio.run(
                appends(
                    "127.0.0.41", args.port_base + 1, args.records, args.batch, args.concurrency
                )
            )
        finally:
            for process in reversed(processes):
                process.stop()
        stats = re.search(
            r"appends=(\d+) commits=(\d+)", (Path(tmp) / "store.log").read_text(errors="replace")
        )
        if stats:
            made, commits = map(int, stats.groups())
            print(
                f"store: {made} appends in {commits} commits ({made / max(commits, 1):.1f}/fsync)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
