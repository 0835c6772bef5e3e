"""Client drivers against one 3-node reference cluster: records/s each sustains, and what
recording the history costs on the client path.

For each driver (the official Python client, the raw gRPC baseline): append batches of
`--batch` records for `--seconds`, once through `ClientDriver.append` (history recorded:
an invoke and a completion per record, written as JSON lines) and once through the bare
protocol call (`ClientDriver.call("append", ...)`, nothing recorded). Both runs go through
the same driver process and cluster, so their ratio is the recording overhead.

    python benchmarks/driver_bench.py [--seconds 5] [--batch 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness.clients.driver import ClientDriver, raw_payload
from harness.cluster import start_cluster
from harness.history import History
from harness.topology import ClusterSpec

BASE_PORT = 19700


def rate(driver: ClientDriver, stream: str, seconds: float, batch: int, recorded: bool) -> float:
    sent = 0
    n = 0
    deadline = time.monotonic() + seconds
    began = time.monotonic()
    while time.monotonic() < deadline:
        records = [raw_payload(f"b{n}-{i}") for i in range(batch)]
        n += 1
        if recorded:
            reply = driver.append(stream, records, key=f"k{n % 16}")
        else:
            reply = driver.call("append", stream=stream, key=f"k{n % 16}", records=records,
                                compression="none")
        if reply.ok:
            sent += batch
    return sent / (time.monotonic() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    spec = ClusterSpec(nodes=3, base_port=BASE_PORT, session=f"bench-drivers-{os.getpid()}")
    figures: dict[str, dict[str, float]] = {}
    with start_cluster(spec) as cluster, tempfile.TemporaryDirectory() as tmp:
        endpoints = [str(n.client) for n in cluster.nodes]
        for client in ("raw", "python"):
            history = History(Path(tmp) / f"{client}.jsonl")
            with ClientDriver(client, history=history, evidence_dir=Path(tmp)) as driver:
                assert driver.connect(endpoints).ok
                stream = f"bench_{uuid.uuid4().hex[:8]}"
                assert driver.simple("create_stream", stream=stream, shards=4).ok
                bare = rate(driver, stream, args.seconds, args.batch, recorded=False)
                recorded = rate(driver, stream, args.seconds, args.batch, recorded=True)
            history.close()
            figures[client] = {
                "records_per_s_bare": round(bare, 1),
                "records_per_s_recorded": round(recorded, 1),
                "recording_overhead_pct": round(100 * (bare - recorded) / bare, 1) if bare else 0,
            }
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(f"drivers on a 3-node reference cluster, batches of {args.batch}, "
              f"{args.seconds:.0f} s each")
        for client, f in figures.items():
            print(f"  {client:7s} {f['records_per_s_bare']:9.0f} rec/s bare  "
                  f"{f['records_per_s_recorded']:9.0f} rec/s with history  "
                  f"(recording costs {f['recording_overhead_pct']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
