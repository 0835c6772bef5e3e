"""Connector task takeover across real nodes: three node processes, each running the real
gossip layer and the connector service over one real store process; the node running the
tasks is SIGKILLed and another node, once gossip confirms the death, resumes the tasks
from their checkpoints in the store.

A node here is the reference server reduced to what HStream IO needs (gossip + connector
RPCs): this file doubles as that node's program (`python THIS_FILE node ...`), so the test
does not depend on the full API servicer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from refcluster_launcher import free_port

# Ports of this test process's own: xdist workers (or --repeat spread over them) may run this
# module at once, and a node bound to another worker's port would share its calls.
STORE_PORT = free_port("127.0.0.1")
NODE_PORTS = {i: (free_port("127.0.0.1"), free_port("127.0.0.1")) for i in (1, 2, 3)}
DEADLINE_S = 180.0

pytestmark = pytest.mark.slow


# The node program ---------------------------------------------------------------------------


def node_main(argv: list[str]) -> None:
    import grpc
    from HStream.Server import HStreamApi_pb2_grpc as api_grpc

    from refserver import routing
    from refserver.gossip.config import GossipConfig
    from refserver.gossip.node import GossipNode
    from refserver.io import ConnectorCatalog, ConnectorService
    from refserver.membership import NodeAddress
    from refserver.protos import Store_pb2_grpc

    parser = argparse.ArgumentParser()
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gossip-port", type=int, required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--catalog", type=Path, required=True)
    args = parser.parse_args(argv)

    class GossipOwnership:
        def __init__(self, gossip: GossipNode) -> None:
            self._gossip = gossip

        async def owner(self, kind: str, resource_id: str) -> NodeAddress:
            return routing.owner(f"{kind}/{resource_id}", self._gossip.alive())

        async def check_owner(self, kind: str, resource_id: str, context: Any) -> None:
            return None

    class ConnectorNode(api_grpc.HStreamApiServicer):
        def __init__(self, service: ConnectorService) -> None:
            self.service = service

        def __getattribute__(self, name: str) -> Any:
            if "Connector" in name:
                return getattr(object.__getattribute__(self, "service"), name)
            return object.__getattribute__(self, name)

    async def serve() -> None:
        me = NodeAddress(args.id, "127.0.0.1", args.port, "127.0.0.1", args.gossip_port)
        host, port = args.seed.split(":")
        gossip = GossipNode(GossipConfig(
            self_node=me, seeds=[(host, int(port))], probe_interval=0.5,
            roundtrip_timeout=0.2, suspicion_mult=2, gossip_interval=0.3))
        channel = grpc.aio.insecure_channel(args.store)
        service = ConnectorService(Store_pb2_grpc.StoreStub(channel), gossip,
                                   GossipOwnership(gossip), frozenset(), me,
                                   ConnectorCatalog.load(args.catalog))
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        gossip.add_to_server(server)
        api_grpc.add_HStreamApiServicer_to_server(ConnectorNode(service), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        server.add_insecure_port(f"127.0.0.1:{args.gossip_port}")
        await server.start()
        await gossip.start()
        await service.start()
        print(f"node {args.id} ready", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        while not stopping.is_set():
            alive = sorted(n.id for n in gossip.alive())
            print(f"alive {alive}", flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
        await service.stop()
        await gossip.stop()
        await server.stop(grace=0.5)

    asyncio.run(serve())


# The test -------------------------------------------------------------------------------------


def _wait_log(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path.name}: no {text!r} (exit {process.poll()}):\n"
                        + path.read_text(errors="replace")[-3000:])
        time.sleep(0.1)


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A store and three IO nodes; every process (and stray connector) is killed after."""
    from harness.io.connectors import load_connectors

    defs = {d.name: d for d in load_connectors()}
    wrapper = 'echo "$$ $1" >> "$CONNECTOR_PIDS"; exec "$0" "$@"'
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as log:
            processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return processes[name]

    try:
        store = start("store", [sys.executable, "-m", "refserver.store", "--data-dir",
                                str(tmp_path / "db"), "--port", str(STORE_PORT)])
        _wait_log(logs["store"], "Store is started", store, 20)
        for node_id, (port, gossip_port) in NODE_PORTS.items():
            catalog = tmp_path / f"catalog-{node_id}.json"
            catalog.write_text(json.dumps({
                "sources": {"faker": {
                    "command": ["sh", "-c", wrapper,
                                str(defs["source-faker"].launch().path)],  # type: ignore[union-attr]
                    "env": {"CONNECTOR_PIDS": str(tmp_path / f"pids-{node_id}")}}},
                "sinks": {"sqlite": {
                    "command": ["sh", "-c", wrapper,
                                str(defs["destination-sqlite"].launch().path)],  # type: ignore[union-attr]
                    "env": {"CONNECTOR_PIDS": str(tmp_path / f"pids-{node_id}")}}}}))
            node = start(f"node-{node_id}", [
                sys.executable, __file__, "node", "--id", str(node_id), "--port", str(port),
                "--gossip-port", str(gossip_port), "--seed", f"127.0.0.1:{NODE_PORTS[1][1]}",
                "--store", f"127.0.0.1:{STORE_PORT}", "--catalog", str(catalog)])
            _wait_log(logs[f"node-{node_id}"], f"node {node_id} ready", node, 60)
        for node_id in NODE_PORTS:
            _wait_log(logs[f"node-{node_id}"], "alive [1, 2, 3]", processes[f"node-{node_id}"], 30)
        yield {"processes": processes, "logs": logs, "dir": tmp_path}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pids in tmp_path.glob("pids-*"):
            for line in pids.read_text().splitlines():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int(line.split()[0]), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _names_on_one_node() -> tuple[str, str]:
    """A source and a sink name that hash to the same node, so that killing the node that
    runs the source also moves the sink (ownership hashes the name over the alive ids)."""
    from refserver import routing
    from refserver.membership import NodeAddress

    nodes = [NodeAddress(i, "127.0.0.1", p, "127.0.0.1", g) for i, (p, g) in NODE_PORTS.items()]
    for n in range(100):
        source, sink = f"users_in{n}", f"users_out{n}"
        if routing.owner(f"connector/{source}", nodes) == routing.owner(f"connector/{sink}",
                                                                         nodes):
            return source, sink
    raise AssertionError("no pair of connector names shares an owner")


def test_tasks_move_to_another_node_when_their_node_is_killed(cluster_dir: dict[str, Any]
                                                               ) -> None:
    from HStream.Server import HStreamApi_pb2 as api

    from refserver import records
    from refserver.io.sink_task import record_data

    def user_id(record: api.HStreamRecord) -> int:
        data = record_data(record)
        assert data is not None, f"a RAW record in the connector's stream: {record}"
        return int(data["id"])
    from refserver.protos import Store_pb2, Store_pb2_grpc

    count = 3000
    source_name, sink_name = _names_on_one_node()
    database = cluster_dir["dir"] / "out.sqlite"
    shards = [7001, 7002]

    async def scenario() -> dict[str, Any]:
        import grpc
        from HStream.Server import HStreamApi_pb2_grpc as api_grpc

        store = Store_pb2_grpc.StoreStub(grpc.aio.insecure_channel(f"127.0.0.1:{STORE_PORT}"))
        await store.MetaPut(Store_pb2.MetaPutReq(key="streams/moved", expected_version=0,
                                                 value=json.dumps({"shards": shards}).encode()))
        stubs = {i: api_grpc.HStreamApiStub(grpc.aio.insecure_channel(f"127.0.0.1:{p}"))
                 for i, (p, _) in NODE_PORTS.items()}

        async def stream_ids() -> Counter[int]:
            ids: Counter[int] = Counter()
            for shard in shards:
                lsn = 1
                while True:
                    reply = await store.Read(Store_pb2.ReadReq(log_id=shard, from_lsn=lsn,
                                                               max_entries=8))
                    for entry in reply.entries:
                        batch = api.BatchedRecord()
                        batch.ParseFromString(entry.payload)
                        ids.update(user_id(r) for r in records.decode(batch))
                        lsn = entry.lsn + 1
                    if not reply.entries:
                        break
            return ids

        def sink_ids() -> Counter[int]:
            if not database.exists():
                return Counter()
            with contextlib.closing(sqlite3.connect(database)) as conn:
                try:
                    return Counter(json.loads(r[0])["id"]
                                   for r in conn.execute('SELECT data FROM "airbyte_users"'))
                except sqlite3.OperationalError:
                    return Counter()

        async def wait(what: str, check: Any) -> Any:
            deadline = time.monotonic() + DEADLINE_S
            while not (result := await check()):
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting until {what}; node logs in "
                                f"{cluster_dir['dir']}")
                await asyncio.sleep(0.5)
            return result

        await stubs[1].CreateConnector(api.CreateConnectorRequest(
            name=sink_name, type="SINK", target="sqlite",
            config=json.dumps({"stream": "moved", "airbyte_stream": "users",
                               "database_path": str(database)})))
        await stubs[1].CreateConnector(api.CreateConnectorRequest(
            name=source_name, type="SOURCE", target="faker",
            config=json.dumps({"stream": "moved", "airbyte_stream": "users", "count": count,
                               "seed": 7, "records_per_slice": 100, "parallelism": 1,
                               "always_updated": True})))

        async def checkpointed() -> api.Connector | None:
            # Mid-read: the first STATE is stored, the read goes on.
            got = await stubs[1].GetConnector(api.GetConnectorRequest(name=source_name))
            assert got.status == "RUNNING", f"the source is {got.status} before the kill"
            return got if got.offsets else None
        source = await wait("the source stores its first checkpoint", checkpointed)
        at_kill = sum((await stream_ids()).values())
        sink = await stubs[1].GetConnector(api.GetConnectorRequest(name=sink_name))
        victim = next(i for i, (p, _) in NODE_PORTS.items() if source.node == f"127.0.0.1:{p}")
        cluster_dir["processes"][f"node-{victim}"].kill()

        async def orphans_gone() -> bool:
            # The connectors of a dead node die with it (they must not keep writing).
            pids = cluster_dir["dir"] / f"pids-{victim}"
            return not any(_alive(int(line.split()[0]))
                           for line in pids.read_text().splitlines())
        await wait("the killed node's connector processes are gone", orphans_gone)
        survivor = next(i for i in NODE_PORTS if i != victim)

        async def completed() -> bool:
            got = await stubs[survivor].GetConnector(api.GetConnectorRequest(name=source_name))
            return got.status == "COMPLETED"
        await wait("the source completes on another node", completed)
        moved_to = (await stubs[survivor].GetConnector(
            api.GetConnectorRequest(name=source_name))).node

        async def sink_done() -> bool:
            return len(sink_ids()) >= count and \
                sum(sink_ids().values()) >= sum((await stream_ids()).values())
        await wait("the sink wrote every user", sink_done)
        in_stream, in_sink = await stream_ids(), sink_ids()
        sink_moved_to = (await stubs[survivor].GetConnector(
            api.GetConnectorRequest(name=sink_name))).node
        return {"victim": victim, "source_ran_on": source.node, "sink_ran_on": sink.node,
                "moved_to": moved_to, "sink_moved_to": sink_moved_to,
                "stream_records_at_kill": at_kill,
                "stream": in_stream, "sink": in_sink}

    result = asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S * 3))
    stream, sink = result["stream"], result["sink"]
    figures = {k: v for k, v in result.items() if k not in ("stream", "sink")}
    figures.update(stream_records=sum(stream.values()), stream_duplicates=sum(stream.values())
                   - len(stream), sink_rows=sum(sink.values()),
                   sink_resent=sum(max(n - stream[k], 0) for k, n in sink.items()))
    assert result["sink_ran_on"] == result["source_ran_on"], figures
    assert result["moved_to"] != result["source_ran_on"], figures
    assert result["sink_moved_to"] != result["sink_ran_on"], figures
    assert sorted(stream) == list(range(1, count + 1)), \
        f"stream lost users {sorted(set(range(1, count + 1)) - set(stream))[:10]}; {figures}"
    missing = {k: n - sink.get(k, 0) for k, n in stream.items() if sink.get(k, 0) < n}
    assert not missing, f"sink lacks copies of {len(missing)} users; {figures}"
    print("takeover accounting:", json.dumps(figures))


if __name__ == "__main__" and sys.argv[1:2] == ["node"]:
    node_main(sys.argv[2:])
