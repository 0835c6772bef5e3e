"""Each Toxiproxy toxic, measured on real sockets through a proxy to a real echo server.

Runs against the embedded server by default, or against a real Toxiproxy given by
`--toxiproxy-url` / HSTREAM_TOXIPROXY_URL (which must share this host's loopback, since the
echo upstream listens on 127.0.0.1). Bounds come from the toxic's definition plus a
tolerance for scheduling on a busy 2-core machine; every assertion prints what it measured.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from harness.faults.toxiproxy import ToxiproxyHandle, find_toxiproxy
from harness.faults.toxiproxy_server.toxics import Slicer

ECHO_LISTEN_TIMEOUT = 5.0
_names = itertools.count()


@pytest.fixture(scope="module")
def toxiproxy_server(request: pytest.FixtureRequest) -> Iterator[ToxiproxyHandle]:
    url = os.environ.get("HSTREAM_TOXIPROXY_URL") or request.config.getoption(
        "--toxiproxy-url", default=None)
    handle = find_toxiproxy(url)
    yield handle
    handle.stop()


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1 (the proxied upstream)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        # shutdown wakes the accept() blocked in the other thread; close alone does not
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.clients:
            conn.close()
        self._thread.join(timeout=2)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(toxiproxy_server: ToxiproxyHandle, echo: EchoServer) -> Iterator[str]:
    """A fresh proxy to the echo server; yields its name, deleted afterwards."""
    name = f"echo_{os.getpid()}_{next(_names)}"
    toxiproxy_server.create_proxy(name, "127.0.0.1:0", echo.address)
    yield name
    toxiproxy_server.delete_proxy(name)


def connect(handle: ToxiproxyHandle, proxy: str) -> socket.socket:
    host, port = handle.proxy(proxy)["listen"].rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=ECHO_LISTEN_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += part
    return data


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - started


def median_rtt(sock: socket.socket, count: int = 5) -> float:
    return statistics.median(round_trip(sock) for _ in range(count))


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, float, bytes]:
    """Read until the peer closes; returns how ("eof"/"reset"/"open"), when, and the data."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
        return "eof", time.monotonic() - started, data
    except ConnectionResetError:
        return "reset", time.monotonic() - started, data
    except TimeoutError:
        return "open", time.monotonic() - started, data


def test_latency_adds_round_trip_time(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    with connect(toxiproxy_server, proxy) as sock:
        baseline = median_rtt(sock)
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 100})
    with connect(toxiproxy_server, proxy) as sock:
        added = median_rtt(sock) - baseline
    assert 0.070 <= added <= 0.130, f"latency 100 ms: added RTT {added * 1000:.1f} ms"


def test_latency_both_streams_add_up(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 60}, stream="upstream")
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 60}, stream="downstream")
    with connect(toxiproxy_server, proxy) as sock:
        rtt = median_rtt(sock)
    assert 0.100 <= rtt <= 0.160, f"60 ms each way: RTT {rtt * 1000:.1f} ms, expected ~120"


def test_jitter_stays_within_bounds(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 100, "jitter": 50})
    with connect(toxiproxy_server, proxy) as sock:
        samples = [round_trip(sock) for _ in range(16)]
    shown = [round(s * 1000) for s in samples]
    # latency ± jitter is uniform on [50, 150) ms; allow 25 ms of scheduling noise on top
    assert all(0.045 <= s <= 0.175 for s in samples), f"RTTs outside 100±50 ms: {shown}"
    assert max(samples) - min(samples) >= 0.030, f"no jitter visible in RTTs (ms): {shown}"


def test_live_toxic_add_and_remove_on_open_connection(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    with connect(toxiproxy_server, proxy) as sock:
        before = median_rtt(sock, 3)
        toxiproxy_server.add_toxic(proxy, "latency", {"latency": 100}, name="live")
        during = median_rtt(sock, 3)
        toxiproxy_server.remove_toxic(proxy, "live")
        after = median_rtt(sock, 3)
    figures = f"before {before * 1e3:.1f} ms, during {during * 1e3:.1f}, after {after * 1e3:.1f}"
    assert during - before >= 0.070, "toxic added to a live connection had no effect: " + figures
    assert after < 0.030, "toxic removed from a live connection still slows it: " + figures


def test_bandwidth_caps_throughput(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    rate_kb = 100
    size = 150_000
    toxiproxy_server.add_toxic(proxy, "bandwidth", {"rate": rate_kb})
    payload = os.urandom(size)
    with connect(toxiproxy_server, proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        started = time.monotonic()
        sender.start()
        received = recv_exactly(sock, size)
        elapsed = time.monotonic() - started
        sender.join()
    assert received == payload
    rate = size / elapsed / 1000
    assert rate_kb * 0.5 <= rate <= rate_kb * 1.2, (
        f"bandwidth {rate_kb} KB/s: measured {rate:.1f} KB/s ({size} bytes in {elapsed:.2f} s)")


def test_slow_close_delays_the_close(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    with connect(toxiproxy_server, proxy) as sock:
        round_trip(sock)
        sock.shutdown(socket.SHUT_WR)
        how, baseline, _ = wait_closed(sock, 3)
    assert how == "eof" and baseline < 0.15, f"plain close: {how} after {baseline:.3f} s"
    toxiproxy_server.add_toxic(proxy, "slow_close", {"delay": 400})
    with connect(toxiproxy_server, proxy) as sock:
        assert round_trip(sock) < 0.1, "slow_close must not delay data"
        sock.shutdown(socket.SHUT_WR)
        how, elapsed, _ = wait_closed(sock, 3)
    assert how == "eof" and 0.35 <= elapsed <= 0.9, (
        f"slow_close 400 ms: close seen as {how} after {elapsed:.3f} s")


def test_timeout_drops_data_then_closes(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "timeout", {"timeout": 400})
    with connect(toxiproxy_server, proxy) as sock:
        sock.sendall(b"ping")
        how, elapsed, data = wait_closed(sock, 3)
    assert data == b"", f"timeout toxic let {data!r} through"
    assert how in ("eof", "reset") and 0.3 <= elapsed <= 1.0, (
        f"timeout 400 ms: connection {how} after {elapsed:.3f} s")


def test_timeout_zero_holds_until_removed(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "timeout", {"timeout": 0})
    with connect(toxiproxy_server, proxy) as sock:
        sock.sendall(b"ping")
        how, elapsed, data = wait_closed(sock, 0.6)
        assert (how, data) == ("open", b""), f"timeout 0: {how} after {elapsed:.3f}s, {data!r}"
        # Toxiproxy's timeout toxic closes the connections it holds when it is removed
        toxiproxy_server.remove_toxic(proxy, "timeout_downstream")
        how, elapsed, data = wait_closed(sock, 2)
    assert how in ("eof", "reset") and data == b"", (
        f"after removing timeout toxic: {how} after {elapsed:.3f} s with {data!r}")


def test_reset_peer_resets_the_connection(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "reset_peer", {"timeout": 200}, stream="upstream")
    with connect(toxiproxy_server, proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        how, _, data = wait_closed(sock, 3)
        elapsed = time.monotonic() - started
    assert how == "reset", f"reset_peer: client saw {how} ({data!r}), expected ECONNRESET"
    assert 0.15 <= elapsed <= 1.0, f"reset_peer timeout 200 ms: reset after {elapsed:.3f} s"


def test_slicer_delivers_small_chunks(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(
        proxy, "slicer", {"average_size": 50, "size_variation": 10, "delay": 5000})
    payload = os.urandom(2000)
    sizes: list[int] = []
    with connect(toxiproxy_server, proxy) as sock:
        sock.sendall(payload)
        data = b""
        while len(data) < len(payload):
            part = sock.recv(65536)
            assert part, f"closed after {len(data)} bytes"
            sizes.append(len(part))
            data += part
    assert data == payload, "slicer changed or reordered the data"
    assert len(sizes) >= 10 and statistics.median(sizes) <= 120, (
        f"slicer 50±10 bytes: {len(sizes)} reads, sizes {sizes}")


def test_limit_data_cuts_after_n_bytes(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "limit_data", {"bytes": 1000})
    payload = os.urandom(3000)
    with connect(toxiproxy_server, proxy) as sock:
        sock.sendall(payload)
        how, _, data = wait_closed(sock, 3)
    assert how in ("eof", "reset") and data == payload[:1000], (
        f"limit_data 1000: got {len(data)} bytes then {how}")


def test_toxicity_zero_leaves_connections_alone(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 200}, toxicity=0.0)
    with connect(toxiproxy_server, proxy) as sock:
        rtt = median_rtt(sock, 3)
    assert rtt < 0.1, f"toxicity 0 still delayed the connection: {rtt * 1000:.1f} ms"


def test_disable_refuses_and_cuts_then_reenable(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    listen = toxiproxy_server.proxy(proxy)["listen"]
    with connect(toxiproxy_server, proxy) as sock:
        round_trip(sock)
        assert toxiproxy_server.set_enabled(proxy, False)["enabled"] is False
        how, elapsed, _ = wait_closed(sock, 2)
    assert how in ("eof", "reset"), f"open connection not cut by enabled=false ({how})"
    host, port = listen.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()
    assert toxiproxy_server.set_enabled(proxy, True)["listen"] == listen
    with connect(toxiproxy_server, proxy) as sock:
        assert round_trip(sock) < 0.1


def test_reset_removes_toxics_and_enables(toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 300})
    toxiproxy_server.set_enabled(proxy, False)
    toxiproxy_server.reset()
    state = toxiproxy_server.proxy(proxy)
    assert state["enabled"] is True and state["toxics"] == [], f"after /reset: {state}"
    with connect(toxiproxy_server, proxy) as sock:
        rtt = median_rtt(sock, 3)
    assert rtt < 0.1, f"/reset left the latency in place: RTT {rtt * 1000:.1f} ms"


def test_chain_changes_under_traffic_keep_every_byte_in_order(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    """Toxics added and removed while data flows re-link the chain; nothing may be lost,
    duplicated or reordered (Toxiproxy flushes what an interrupted toxic holds)."""
    payload = os.urandom(300_000)
    changes: list[str] = []
    stop = threading.Event()

    def churn() -> None:
        toxics = [("latency", {"latency": 5, "jitter": 2}, "downstream"),
                  ("slicer", {"average_size": 500, "size_variation": 100, "delay": 50},
                   "downstream"),
                  ("bandwidth", {"rate": 2000}, "upstream"),
                  ("latency", {"latency": 3}, "upstream")]
        for round_no in range(40):
            if stop.is_set():
                return
            type_name, attributes, stream = toxics[round_no % len(toxics)]
            toxic_name = f"churn_{round_no}"
            toxiproxy_server.add_toxic(proxy, type_name, attributes, stream=stream,
                                       name=toxic_name)
            changes.append(f"+{toxic_name}")
            time.sleep(0.01)
            if round_no % 2:
                toxiproxy_server.remove_toxic(proxy, f"churn_{round_no - 1}")
                toxiproxy_server.remove_toxic(proxy, toxic_name)
                changes.append(f"-{round_no - 1},{round_no}")

    # a steady cap makes the transfer last ~1.2 s, so the churn happens mid-stream
    toxiproxy_server.add_toxic(proxy, "bandwidth", {"rate": 250}, name="steady")
    with connect(toxiproxy_server, proxy) as sock:
        churner = threading.Thread(target=churn)
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        churner.start()
        sender.start()
        sock.settimeout(20)
        try:
            received = recv_exactly(sock, len(payload))
            changes_during_transfer = len(changes)
        finally:
            stop.set()
            churner.join(timeout=30)
            sender.join(timeout=30)
    first_bad = next((i for i, (a, b) in enumerate(zip(received, payload, strict=True))
                      if a != b), None)
    assert first_bad is None, (
        f"echo differs from what was sent at byte {first_bad} of {len(payload)}; "
        f"chain changes so far: {changes}")
    assert changes_during_transfer >= 10, (
        f"only {changes_during_transfer} chain changes happened during the transfer")


def test_listen_change_restarts_proxy_and_drops_connections(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    with connect(toxiproxy_server, proxy) as sock:
        round_trip(sock)
        moved = toxiproxy_server.request("POST", f"/proxies/{proxy}",
                                         {"listen": "127.0.0.1:0"}).json()
        how, _, _ = wait_closed(sock, 2)
    assert how in ("eof", "reset"), f"connection survived a listen change ({how}): {moved}"
    with connect(toxiproxy_server, proxy) as sock:
        assert round_trip(sock) < 0.1


def test_closed_connections_leave_no_descriptors(
        toxiproxy_server: ToxiproxyHandle, proxy: str) -> None:
    """Proxied connections closed by either side must release both sockets in the server."""
    if toxiproxy_server.process is None or not os.path.isdir(
            f"/proc/{toxiproxy_server.process.pid}/fd"):
        pytest.skip("needs a Toxiproxy process started by this test run, on Linux")
    fd_dir = f"/proc/{toxiproxy_server.process.pid}/fd"

    def open_fds() -> int:
        return len(os.listdir(fd_dir))

    with connect(toxiproxy_server, proxy) as sock:
        round_trip(sock)  # first use opens whatever the server keeps for good
    time.sleep(0.2)
    before = open_fds()
    toxiproxy_server.add_toxic(proxy, "latency", {"latency": 5}, stream="upstream")
    for i in range(30):
        sock = connect(toxiproxy_server, proxy)
        round_trip(sock)
        if i % 2:
            sock.shutdown(socket.SHUT_WR)  # client-initiated close, proxy closes both sides
            wait_closed(sock, 2)
        sock.close()
    deadline = time.monotonic() + 5
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before, f"server holds {open_fds()} descriptors, {before} before"


@pytest.mark.parametrize(("average", "variation", "size"),
                         [(50, 10, 2000), (1, 0, 7), (10, 9, 1), (0, 0, 5), (64, 200, 4096)])
def test_slicer_cut_points_cover_the_chunk(average: int, variation: int, size: int) -> None:
    """Pure check of the embedded slicer's split: contiguous, complete, never empty, and
    within average ± variation except for the short tail pieces recursion leaves."""
    points = Slicer(average_size=average, size_variation=variation).cut_points(0, size)
    pieces = list(zip(points[0::2], points[1::2], strict=True))
    assert pieces[0][0] == 0 and pieces[-1][1] == size, pieces
    assert all(a == prev_end for (a, _), (_, prev_end) in zip(pieces[1:], pieces, strict=False))
    assert all(end > start for start, end in pieces), f"empty slice in {pieces}"
    assert max(end - start for start, end in pieces) <= max(1, average) + variation, pieces
