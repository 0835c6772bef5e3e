"""HStream IO runtime end to end on one node: a real store process, the connector service
behind a real gRPC server, and real Airbyte connectors (Faker as the source, the harness's
SQLite destination as the sink), spoken to over the connector RPCs.

Streams are written straight into the store in the API layer's layout (`streams/{name}`
with its shard ids), so these tests need nothing but the store and the service. Connector
programs are started through a shell wrapper that records each run's pid and subcommand,
which is how a test kills the connector process mid-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from refcluster_launcher import SingleNodeMembership, free_port, running_store

from harness.io.connectors import load_connectors
from harness.wire import expected_ranges, key_hash
from refserver import records
from refserver.defects import UnknownDefect, parse_defects
from refserver.io import CatalogError, ConnectorCatalog, ConnectorService
from refserver.io.sink_task import record_data
from refserver.membership import NodeAddress
from refserver.protos import Store_pb2, Store_pb2_grpc

_ids = itertools.count(int(time.time()) % 10**6 * 1000)
# Faker's users stream keeps an `updated_at` cursor; with always_updated it stamps every
# record with the wall clock, so a read resumed from a STATE re-emits the users as newer
# versions (without it, a resumed read emits nothing past the cursor and the rest is lost
# by the connector's own semantics).
FAKER_CONFIG = {"seed": 42, "records_per_slice": 100, "parallelism": 1, "always_updated": True}
# Connector start-up (a Python venv importing airbyte-cdk) takes seconds on a loaded
# 2-core machine; every wait below is bounded by this.
DEADLINE_S = 120.0

pytestmark = pytest.mark.slow


# Processes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_store(tmp_path_factory.mktemp("store")) as address:
        yield address


@pytest.fixture(scope="module")
def catalog_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The node's connector catalogue: Faker and the SQLite destination, each started by
    a wrapper that appends "pid subcommand" to a file named by $CONNECTOR_PIDS."""
    defs = {d.name: d for d in load_connectors()}
    wrapper = 'echo "$$ $1" >> "$CONNECTOR_PIDS"; exec "$0" "$@"'
    pids = tmp_path_factory.mktemp("pids")

    def entry(name: str) -> dict[str, Any]:
        exe = defs[name].launch().path  # type: ignore[union-attr]
        return {"command": ["sh", "-c", wrapper, str(exe)],
                "env": {"CONNECTOR_PIDS": str(pids / f"{name}.pids")}}

    return {"sources": {"faker": entry("source-faker")},
            "sinks": {"sqlite": entry("destination-sqlite")},
            "_pids": str(pids)}


@pytest.fixture
def node_defects(request: pytest.FixtureRequest) -> frozenset[str]:
    """The seeded defects named with --defect, for the node of a test that targets one."""
    try:
        return parse_defects(request.config.getoption("defect"))
    except UnknownDefect as error:
        pytest.fail(str(error), pytrace=False)


def connector_pids(doc: dict[str, Any], name: str, subcommand: str) -> list[int]:
    path = Path(doc["_pids"]) / f"{name}.pids"
    if not path.exists():
        return []
    return [int(line.split()[0]) for line in path.read_text().splitlines()
            if line.split()[1:2] == [subcommand]]


class SelfOwnership:
    """One node owns everything: the whole truth of a one-node cluster."""

    def __init__(self, node: NodeAddress) -> None:
        self._node = node

    async def owner(self, kind: str, resource_id: str) -> NodeAddress:
        return self._node

    async def check_owner(self, kind: str, resource_id: str,
                          context: grpc.aio.ServicerContext) -> None:
        return None


class ConnectorNode(api_grpc.HStreamApiServicer):
    """The connector RPCs of a node, delegated to the service as the API servicer does."""

    def __init__(self, service: ConnectorService) -> None:
        self.service = service

    def __getattribute__(self, name: str) -> Any:
        if name.endswith("Connector") or name in ("ListConnectors", "GetConnectorSpec",
                                                   "GetConnectorLogs"):
            return getattr(object.__getattribute__(self, "service"), name)
        return object.__getattribute__(self, name)


@contextlib.asynccontextmanager
async def running_node(store_address: str, catalog: dict[str, Any],
                       defects: frozenset[str] = frozenset()
                       ) -> AsyncIterator[tuple[api_grpc.HStreamApiStub, Store_pb2_grpc.StoreStub,
                                                ConnectorService]]:
    # A port no other test process holds (xdist workers may run this module at once), bound
    # without SO_REUSEPORT so that a clash fails here instead of sharing the port's calls.
    port = free_port("127.0.0.1")
    node = NodeAddress(id=1, host="127.0.0.1", port=port, gossip_host="127.0.0.1", gossip_port=0)
    store_channel = grpc.aio.insecure_channel(store_address)
    store = Store_pb2_grpc.StoreStub(store_channel)
    service = ConnectorService(store, SingleNodeMembership(node), SelfOwnership(node),
                               defects, node, ConnectorCatalog.from_json(
                                   {k: v for k, v in catalog.items() if not k.startswith("_")}))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    api_grpc.add_HStreamApiServicer_to_server(ConnectorNode(service), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise RuntimeError(f"port {port} was taken between choosing and binding it")
    await server.start()
    await service.start()
    client_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield api_grpc.HStreamApiStub(client_channel), store, service
    finally:
        await service.stop()
        await client_channel.close()
        await server.stop(grace=0.5)
        await store_channel.close()


async def create_stream(store: Store_pb2_grpc.StoreStub, name: str, shard_count: int) -> list[int]:
    shards = [next(_ids) for _ in range(shard_count)]
    await store.MetaPut(Store_pb2.MetaPutReq(key=f"streams/{name}", expected_version=0,
                                             value=json.dumps({
                                                 "name": name, "replicationFactor": 1,
                                                 "backlogDuration": 0, "shardCount": shard_count,
                                                 "creationTimeMs": int(time.time() * 1000),
                                                 "shards": shards}).encode()))
    return shards


async def stream_records(store: Store_pb2_grpc.StoreStub, shards: list[int]
                         ) -> list[tuple[int, int, api.HStreamRecord]]:
    """(shard, lsn, record) for every record in the stream, straight from the store."""
    out: list[tuple[int, int, api.HStreamRecord]] = []
    for shard in shards:
        lsn = 1
        while True:
            reply = await store.Read(Store_pb2.ReadReq(log_id=shard, from_lsn=lsn,
                                                       max_entries=8))
            for entry in reply.entries:
                batch = api.BatchedRecord()
                batch.ParseFromString(entry.payload)
                out.extend((shard, entry.lsn, r) for r in records.decode(batch))
                lsn = entry.lsn + 1
            if not reply.entries:
                break
    return out


def sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            return [json.loads(row[0]) for row in conn.execute(f'SELECT data FROM "{table}"')]
        except sqlite3.OperationalError:  # the destination has not created the table yet
            return []


async def eventually(what: str, check: Callable[[], Any], evidence: Callable[[], Any],
                     timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            seen = evidence()
            if asyncio.iscoroutine(seen):
                seen = await seen
            pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}; seen: {seen}")
        await asyncio.sleep(0.25)


def user_id(record: api.HStreamRecord) -> int:
    data = record_data(record)
    assert data is not None, f"a RAW record in a connector's stream: {record}"
    return int(data["id"])


def error_of(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    return json.loads(exc.details() or "{}")


async def logs_of(client: api_grpc.HStreamApiStub, name: str) -> str:
    reply = await client.GetConnectorLogs(api.GetConnectorLogsRequest(name=name))
    return reply.logs


_fresh_names = itertools.count()


def fresh(name: str) -> str:
    """`name` made unique in this process: the module's store outlives a test, and a test run
    again (--repeat, the defect matrix's runs) must not meet its own earlier streams and
    connectors."""
    return f"{name}_{os.getpid()}_{next(_fresh_names)}"


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, DEADLINE_S * 3))


# Tests -------------------------------------------------------------------------------------


def test_catalogue_bad_input_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="give `command`"):
        ConnectorCatalog.from_json({"sources": {"faker": {"cmd": "x"}}})
    with pytest.raises(CatalogError, match="unknown section"):
        ConnectorCatalog.from_json({"source": {}})
    bad = tmp_path / "catalog.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match="is not JSON"):
        ConnectorCatalog.load(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        ConnectorCatalog.load(tmp_path / "missing.json")


def test_source_to_stream_to_sink_with_every_record_accounted(
        store_address: str, catalog_doc: dict[str, Any], tmp_path: Path) -> None:
    count = 2000
    database = tmp_path / "out.sqlite"
    stream, source, sink = fresh("io_users"), fresh("faker_in"), fresh("sqlite_out")

    async def scenario() -> None:
        async with running_node(store_address, catalog_doc) as (client, store, _service):
            shards = await create_stream(store, stream, 2)
            created = await client.CreateConnector(api.CreateConnectorRequest(
                name=source, type="source", target="faker",
                config=json.dumps({"stream": stream, "airbyte_stream": "users",
                                   "count": count, **FAKER_CONFIG})))
            assert (created.name, created.type, created.status) == (source, "SOURCE", "RUNNING")
            await client.CreateConnector(api.CreateConnectorRequest(
                name=sink, type="SINK", target="sqlite",
                config=json.dumps({"stream": stream, "airbyte_stream": "users",
                                   "database_path": str(database)})))

            async def source_status() -> str:
                got = await client.GetConnector(api.GetConnectorRequest(name=source))
                return got.status
            await eventually("the source completes", lambda: _is(source_status(), "COMPLETED"),
                             lambda: logs_of(client, source))
            in_stream = await stream_records(store, shards)
            ids = Counter(user_id(r) for _, _, r in in_stream)
            assert sorted(ids) == list(range(1, count + 1)), \
                f"stream holds {len(ids)} distinct ids of {count}"
            # One partition key per user id, each key in the shard its MD5 routes to.
            ranges = expected_ranges(len(shards))
            for shard, _lsn, record in in_stream:
                key = record.header.key
                assert key == str(user_id(record))
                lo, hi = ranges[shards.index(shard)]
                assert lo <= key_hash(key) <= hi, f"key {key!r} in the wrong shard {shard}"
            assert {s for s, _, _ in in_stream} == set(shards)

            rows = await eventually(
                f"the sink wrote {count} users",
                lambda: (lambda r: r if len({row["id"] for row in r}) >= count else None)(
                    sqlite_rows(database, "airbyte_users")),
                lambda: f"{len(sqlite_rows(database, 'airbyte_users'))} rows")
            by_id = {row["id"]: row for row in rows}
            for _, _, record in in_stream:
                data = record_data(record)
                assert data is not None
                assert by_id[data["id"]] == data, f"sink row differs for id {data['id']}"
            listed = await client.ListConnectors(api.ListConnectorsRequest())
            # Listed in creation order (the module's store may hold other tests' connectors).
            assert [c.name for c in listed.connectors if c.name in (source, sink)] == [source,
                                                                                         sink]
            sink_state = await client.GetConnector(api.GetConnectorRequest(name=sink))
            offsets = [json_format.MessageToDict(o) for o in sink_state.offsets]
            assert offsets and "positions" in offsets[0], offsets
            logs = await logs_of(client, source)
            assert "started faker read" in logs and "source read completed" in logs, logs
            for name in (source, sink):
                await client.DeleteConnector(api.DeleteConnectorRequest(name=name))

    run(scenario())


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


def test_killed_connector_resumes_from_its_last_state(
        store_address: str, catalog_doc: dict[str, Any], node_defects: frozenset[str]) -> None:
    count = 6000
    stream, name = fresh("io_kill"), fresh("faker_kill")

    async def scenario() -> None:
        async with running_node(store_address, catalog_doc, node_defects) as \
                (client, store, _service):
            shards = await create_stream(store, stream, 1)
            before = set(connector_pids(catalog_doc, "source-faker", "read"))
            await client.CreateConnector(api.CreateConnectorRequest(
                name=name, type="SOURCE", target="faker",
                config=json.dumps({"stream": stream, "airbyte_stream": "users",
                                   "count": count, **FAKER_CONFIG})))

            async def checked_snapshot() -> int:
                # A checkpoint is written only after the records before its STATE are in
                # the store: whatever the checkpoint says was read must be in the stream.
                offsets = (await client.GetConnector(
                    api.GetConnectorRequest(name=name))).offsets
                covered = _faker_offset([json_format.MessageToDict(o) for o in offsets])
                ids = {user_id(r) for _, _, r in
                       await stream_records(store, shards)}
                missing = sorted(set(range(1, covered + 1)) - ids)
                assert not missing, \
                    f"checkpoint covers {covered} users, stream lacks {missing[:10]}"
                return len(ids)
            await eventually("the source appended 500 records",
                             lambda: _at_least(checked_snapshot(), 500), checked_snapshot)
            read_pids = [p for p in connector_pids(catalog_doc, "source-faker", "read")
                         if p not in before]
            assert read_pids, "no read run of the faker connector was recorded"
            os.kill(read_pids[-1], signal.SIGKILL)

            async def status() -> str:
                return (await client.GetConnector(api.GetConnectorRequest(name=name))
                        ).status
            await eventually("the source completes after the kill",
                             lambda: _is(status(), "COMPLETED"),
                             lambda: logs_of(client, name))
            in_stream = await stream_records(store, shards)
            ids = Counter(user_id(r) for _, _, r in in_stream)
            assert sorted(ids) == list(range(1, count + 1)), \
                f"lost ids: {sorted(set(range(1, count + 1)) - set(ids))[:10]}"
            logs = await logs_of(client, name)
            assert "exited with code -9" in logs, logs
            assert "from checkpoint [" in logs, f"the restart ignored the checkpoint:\n{logs}"
            reads = len(connector_pids(catalog_doc, "source-faker", "read")) - len(before)
            assert reads == 2, f"{reads} read runs, expected the killed one and one resume"
            await client.DeleteConnector(api.DeleteConnectorRequest(name=name))

    run(scenario())


def _faker_offset(states: list[dict[str, Any]]) -> int:
    for state in states:
        stream_state = state.get("stream", {}).get("stream_state", {})
        if "loop_offset" in stream_state:
            return int(stream_state["loop_offset"])
    return 0


async def _at_least(value: Any, n: int) -> bool:
    return (await value) >= n


def test_pause_resume_and_delete(store_address: str, catalog_doc: dict[str, Any],
                                 tmp_path: Path) -> None:
    database = tmp_path / "paused.sqlite"
    stream, name = fresh("io_pause"), fresh("sink_p")
    table = f"airbyte_{stream}"  # the sqlite destination's table for the stream

    async def scenario() -> None:
        async with running_node(store_address, catalog_doc) as (client, store, service):
            shards = await create_stream(store, stream, 1)
            await client.CreateConnector(api.CreateConnectorRequest(
                name=name, type="SINK", target="sqlite",
                config=json.dumps({"stream": stream, "database_path": str(database),
                                   "primary_key": ["id"]})))
            await eventually("the sink task runs", lambda: name in service.local_tasks(),
                             service.local_tasks)
            with pytest.raises(grpc.aio.AioRpcError) as exists:
                await client.CreateConnector(api.CreateConnectorRequest(
                    name=name, type="SINK", target="sqlite",
                    config=json.dumps({"stream": stream, "database_path": str(database)})))
            assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS

            await _append_users(store, shards[0], range(1, 51))
            await eventually("50 rows", lambda: len(sqlite_rows(database, table))
                             >= 50, lambda: sqlite_rows(database, table))
            await client.PauseConnector(api.PauseConnectorRequest(name=name))
            got = await client.GetConnector(api.GetConnectorRequest(name=name))
            assert got.status == "STOPPED"
            await eventually("the paused task stops", lambda: name not in
                             service.local_tasks(), service.local_tasks)
            with pytest.raises(grpc.aio.AioRpcError) as twice:
                await client.PauseConnector(api.PauseConnectorRequest(name=name))
            assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION, twice.value
            await _append_users(store, shards[0], range(51, 101))
            await asyncio.sleep(2.0)
            assert len(sqlite_rows(database, table)) == 50, \
                "a paused sink kept writing"
            await client.ResumeConnector(api.ResumeConnectorRequest(name=name))
            rows = await eventually(
                "100 rows after resume",
                lambda: (lambda r: r if len(r) >= 100 else None)(
                    sqlite_rows(database, table)),
                lambda: len(sqlite_rows(database, table)))
            assert sorted(r["id"] for r in rows) == list(range(1, 101))
            # The clean stop checkpointed everything written: resume re-sent nothing.
            logs = await logs_of(client, name)
            assert "from lsns" in logs

            before = set(connector_pids(catalog_doc, "destination-sqlite", "write"))
            await client.DeleteConnector(api.DeleteConnectorRequest(name=name))
            await eventually("the deleted task stops", lambda: name not in
                             service.local_tasks(), service.local_tasks)
            # The task's processes are signalled as it stops and exit soon after.
            await eventually(
                "the deleted task's destination processes exit",
                lambda: not any(_alive(pid, "destination-sqlite") for pid in before),
                lambda: [pid for pid in before if _alive(pid, "destination-sqlite")],
            )
            for call, request in ((client.GetConnector, api.GetConnectorRequest(name=name)),
                                  (client.DeleteConnector,
                                   api.DeleteConnectorRequest(name=name))):
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await call(request)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())


def _alive(pid: int, name: str) -> bool:
    """`pid` still runs `name`: the pid of a process that ended long ago may have been reused
    by another process (on a busy machine running tests in parallel, it is)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if name not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return False
        # A zombie is gone for our purposes (its parent has not reaped it yet).
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


async def _append_users(store: Store_pb2_grpc.StoreStub, shard: int, ids: range) -> None:
    from refserver.io.source_task import json_record
    batch = records.encode([json_record({"id": i, "name": f"user{i}"}, str(i)) for i in ids])
    await store.Append(Store_pb2.AppendReq(log_id=shard, payload=batch.SerializeToString(),
                                           durable=True))


def test_bad_requests_get_one_clear_error(store_address: str,
                                          catalog_doc: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with running_node(store_address, catalog_doc) as (client, store, _service):
            await create_stream(store, "io_bad", 1)
            cases = [
                (dict(name="c1", type="SOURCE", target="nope", config='{"stream": "io_bad"}'),
                 grpc.StatusCode.INVALID_ARGUMENT, "no source connector 'nope'"),
                (dict(name="c1", type="middle", target="faker", config='{"stream": "io_bad"}'),
                 grpc.StatusCode.INVALID_ARGUMENT, "SOURCE or SINK"),
                (dict(name="c1", type="SOURCE", target="faker", config="{"),
                 grpc.StatusCode.INVALID_ARGUMENT, "not a JSON object"),
                (dict(name="c1", type="SOURCE", target="faker", config='{"count": 1}'),
                 grpc.StatusCode.INVALID_ARGUMENT, 'needs "stream"'),
                (dict(name="c1", type="SOURCE", target="faker", config='{"stream": "nostream"}'),
                 grpc.StatusCode.FAILED_PRECONDITION, "does not exist"),
                (dict(name="1bad", type="SOURCE", target="faker", config='{"stream": "io_bad"}'),
                 grpc.StatusCode.INVALID_ARGUMENT, "invalid connector name"),
                (dict(name="c1", type="SOURCE", target="faker",
                      config='{"stream": "io_bad", "count": "many"}'),
                 grpc.StatusCode.INVALID_ARGUMENT, "check"),
            ]
            for fields, status, text in cases:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.CreateConnector(api.CreateConnectorRequest(**fields))
                assert failed.value.code() == status, (fields, failed.value)
                assert text in error_of(failed.value)["message"], (fields, failed.value.details())
            spec = await client.GetConnectorSpec(api.GetConnectorSpecRequest(
                type="SOURCE", target="faker"))
            assert "count" in json.loads(spec.spec)["properties"]
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.GetConnectorLogs(api.GetConnectorLogsRequest(name="nope"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())
