"""Overhead of a Toxiproxy proxy (no toxics) on a loopback echo path.

Measures, directly and through the proxy: round-trip time of small messages (median, p99)
and bulk echo throughput. Against the embedded server by default, or a real Toxiproxy with
`--url` (which must share this host's loopback).

    python benchmarks/toxiproxy_bench.py [--pings 2000] [--megabytes 20] [--url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator

from harness.faults.toxiproxy import ToxiproxyError, connect_toxiproxy, start_toxiproxy


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                while data := conn.recv(262144):
                    conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=2)


def dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trips(address: str, count: int) -> list[float]:
    samples = []
    with dial(address) as sock:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(b"p" * 64)
            got = 0
            while got < 64:
                part = sock.recv(64 - got)
                if not part:
                    raise SystemExit(f"echo via {address} closed during the RTT test")
                got += len(part)
            samples.append(time.perf_counter() - started)
    return samples


def throughput_mb_s(address: str, megabytes: int) -> float:
    block = os.urandom(65536)
    total = megabytes * 1_000_000 // len(block) * len(block)
    with dial(address) as sock:

        def send() -> None:
            for _ in range(total // len(block)):
                sock.sendall(block)

        sender = threading.Thread(target=send)
        started = time.perf_counter()
        sender.start()
        got = 0
        while got < total:
            part = sock.recv(262144)
            if not part:
                raise SystemExit(f"echo via {address} closed after {got} of {total} bytes")
            got += len(part)
        elapsed = time.perf_counter() - started
        sender.join()
    return total / elapsed / 1e6


def measure(label: str, address: str, pings: int, megabytes: int) -> dict[str, float]:
    round_trips(address, min(50, pings))  # warm-up
    samples = sorted(round_trips(address, pings))
    figures = {
        "rtt_median_us": statistics.median(samples) * 1e6,
        "rtt_p99_us": samples[int(len(samples) * 0.99) - 1] * 1e6,
        "echo_mb_s": throughput_mb_s(address, megabytes),
    }
    print(f"{label:<8} RTT median {figures['rtt_median_us']:8.1f} µs   "
          f"p99 {figures['rtt_p99_us']:8.1f} µs   echo throughput "
          f"{figures['echo_mb_s']:8.1f} MB/s")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=2000, help="64-byte round trips (2000)")
    parser.add_argument("--megabytes", type=int, default=20, help="bulk echo size in MB (20)")
    parser.add_argument("--url", help="a running Toxiproxy to measure instead of the embedded")
    args = parser.parse_args()
    if args.pings < 10 or args.megabytes < 1:
        parser.error("--pings must be >= 10 and --megabytes >= 1")
    try:
        handle = connect_toxiproxy(args.url) if args.url else start_toxiproxy()
    except ToxiproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Toxiproxy {handle.kind} {handle.version} at {handle.url}; "
          f"{args.pings} pings of 64 B, {args.megabytes} MB bulk echo")
    name = f"bench_{os.getpid()}"
    try:
        with echo_server() as upstream:
            proxy = handle.create_proxy(name, "127.0.0.1:0", upstream)
            direct = measure("direct", upstream, args.pings, args.megabytes)
            proxied = measure("proxied", proxy.listen, args.pings, args.megabytes)
            handle.delete_proxy(name)
    finally:
        handle.stop()
    added = proxied["rtt_median_us"] - direct["rtt_median_us"]
    print(f"overhead: +{added:.1f} µs per round trip (median), throughput "
          f"{proxied['echo_mb_s'] / direct['echo_mb_s'] * 100:.0f}% of direct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
