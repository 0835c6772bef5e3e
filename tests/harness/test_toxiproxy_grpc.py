"""A gRPC call through a Toxiproxy proxy slows down by the toxic's latency, on a live channel.

gRPC keeps one HTTP/2 connection per channel for its whole life, which is why the harness
adds toxics to open connections (and at toxicity 1.0): this checks both on a real gRPC
server and client, not on raw sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from harness.faults.toxiproxy import ToxiproxyHandle, find_toxiproxy

ECHO_METHOD = "/harness.test.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


class _EchoHandler(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != ECHO_METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: request,
            request_deserializer=_identity, response_serializer=_identity)


@pytest.fixture(scope="module")
def toxiproxy_server(request: pytest.FixtureRequest) -> Iterator[ToxiproxyHandle]:
    url = os.environ.get("HSTREAM_TOXIPROXY_URL") or request.config.getoption(
        "--toxiproxy-url", default=None)
    handle = find_toxiproxy(url)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def grpc_echo() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_EchoHandler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait(5)


def test_grpc_call_slows_by_the_latency(toxiproxy_server: ToxiproxyHandle,
                                        grpc_echo: str) -> None:
    name = f"grpc_echo_{os.getpid()}"
    proxy = toxiproxy_server.create_proxy(name, "127.0.0.1:0", grpc_echo)
    try:
        with grpc.insecure_channel(proxy.listen) as channel:
            echo = channel.unary_unary(ECHO_METHOD, request_serializer=_identity,
                                       response_deserializer=_identity)

            def fastest_call_s(count: int) -> float:
                # The fastest of several calls: the toxic's delay is a floor every call pays,
                # while a loaded machine (parallel workers) only ever adds to some of them.
                samples = []
                for i in range(count):
                    payload = b"x%d" % i
                    started = time.monotonic()
                    assert echo(payload, timeout=10) == payload
                    samples.append(time.monotonic() - started)
                return min(samples)

            fastest_call_s(3)  # connection set-up and HTTP/2 settings exchange
            baseline = fastest_call_s(7)
            toxiproxy_server.add_toxic(name, "latency", {"latency": 100})
            slowed = fastest_call_s(7)
            toxiproxy_server.remove_toxic(name, "latency_downstream")
            recovered = fastest_call_s(7)
    finally:
        toxiproxy_server.delete_proxy(name)
    added = slowed - baseline
    figures = (f"baseline {baseline * 1e3:.1f} ms, with latency 100 ms {slowed * 1e3:.1f} ms, "
               f"after removal {recovered * 1e3:.1f} ms")
    assert 0.070 <= added <= 0.130, "gRPC call not slowed by ~100 ms: " + figures
    assert recovered - baseline < 0.030, "gRPC call still slow after removal: " + figures
