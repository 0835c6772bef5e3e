"""Cost of the clock layer (libfaketime preloaded, its spec re-read on every clock call) on a
node's request latency.

Two 1-node reference clusters run side by side on the local backend, one started with
`clock_faults` (the layer) and one without; unary Echo calls go straight to each node's
client port, in alternating blocks so both see the same machine load. The layered node is
measured twice: with no fault (no spec file yet) and with a +30 s offset in force.

    python benchmarks/clock_layer_bench.py [--calls 2000] [--base-port 31570]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import grpc
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness import HarnessError
from harness.cluster import Cluster, start_cluster
from harness.nemesis import FAULTS, Nemesis
from harness.topology import ClusterSpec

BLOCK = 100  # calls per block; blocks alternate between the nodes


def block(stub: HStreamApi_pb2_grpc.HStreamApiStub, calls: int) -> list[float]:
    samples = []
    request = HStreamApi_pb2.EchoRequest(msg="ping")
    for _ in range(calls):
        started = time.perf_counter()
        stub.Echo(request, timeout=10)
        samples.append(time.perf_counter() - started)
    return samples


def compare(stubs: dict[str, HStreamApi_pb2_grpc.HStreamApiStub], calls: int
            ) -> dict[str, list[float]]:
    for stub in stubs.values():
        block(stub, 50)  # warm-up: connection, server threads
    samples: dict[str, list[float]] = {label: [] for label in stubs}
    while min(map(len, samples.values())) < calls:
        for label, stub in stubs.items():
            samples[label] += block(stub, min(BLOCK, calls - len(samples[label])))
    return samples


def summary(label: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    median = statistics.median(ordered) * 1e6
    print(f"{label:<22} median {median:8.1f} µs   p99 "
          f"{ordered[int(len(ordered) * 0.99) - 1] * 1e6:8.1f} µs   ({len(ordered)} calls)")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="unary calls per setting (2000)")
    parser.add_argument("--base-port", type=int, default=31570,
                        help="the plain node's port block; the layered one uses +10 (31570)")
    args = parser.parse_args()
    if args.calls < 100:
        parser.error("--calls must be >= 100")
    clusters: list[Cluster] = []
    try:
        for name, layer, port in (("plain", False, args.base_port),
                                  ("layer", True, args.base_port + 10)):
            spec = ClusterSpec(nodes=1, toxiproxy=False, clock_faults=layer, base_port=port,
                               name=f"bench-{name}")
            clusters.append(start_cluster(spec, progress=lambda line: None))
        plain, layered = clusters
        channels = [grpc.insecure_channel(str(c.node(1).direct_client)) for c in clusters]
        stubs = {"without layer": HStreamApi_pb2_grpc.HStreamApiStub(channels[0]),
                 "layer, true time": HStreamApi_pb2_grpc.HStreamApiStub(channels[1])}
        print(f"{args.calls} unary Echo calls per setting, blocks of {BLOCK} alternating")
        first = compare(stubs, args.calls)
        nemesis = Nemesis(layered)
        try:
            nemesis.invoke(FAULTS["clock-offset-ahead"].on(1), "start")
            second = compare({"without layer": stubs["without layer"],
                              "layer, +30 s offset": stubs["layer, true time"]}, args.calls)
        finally:
            nemesis.teardown()
        base = summary("without layer", first["without layer"] + second["without layer"])
        true = summary("layer, true time", first["layer, true time"])
        skew = summary("layer, +30 s offset", second["layer, +30 s offset"])
        print(f"ratio (layer / without), median: true time {true / base:.2f}x, "
              f"+30 s offset {skew / base:.2f}x")
        for channel in channels:
            channel.close()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for cluster in clusters:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
