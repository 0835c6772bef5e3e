"""The HStream IO role of a node: connector RPCs and the tasks this node owns.

Any node answers the connector RPCs from the store's metadata (see metadata.py). Running
is decided by ownership: every node reconciles, twice a second and on every membership
change, the connectors whose wanted status is RUNNING against what it runs itself. A node
runs exactly the connectors it owns (ownership kind "connector"), so when an owner is
confirmed dead the next owner starts the task from the last checkpoint, and a paused,
resumed or deleted connector is stopped or restarted by its owner within a period.

A task whose connector program fails is restarted from its checkpoint after a back-off;
after MAX_FAILURES failures in a row without checkpoint progress the connector is FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.errors import HStreamError
from refserver.io import metadata
from refserver.io.airbyte import AirbyteRun, ConnectorFailed, run_to_end
from refserver.io.catalog import ConnectorCatalog, UnknownConnector, kind_of
from refserver.io.config import BadConfig, parse_config
from refserver.io.logs import TaskLog
from refserver.io.metadata import ConnectorRecord, LostCheckpoint
from refserver.io.sink_task import SinkTask
from refserver.io.source_task import SourceTask
from refserver.io.streams import NoSuchStream, stream_shards
from refserver.membership import Member, Membership, NodeAddress
from refserver.protos import Store_pb2_grpc
from refserver.records import BadBatch

log = logging.getLogger(__name__)

# The reference server's own codes for connector errors (HStreamDB's numbers for these
# are not in the protocol facts we have); the gRPC status families follow HStreamDB.
CONNECTOR_NOT_FOUND = 1000
CONNECTOR_EXISTS = 1001
INVALID_CONNECTOR = 1002
INVALID_CONNECTOR_STATUS = 1003

RECONCILE_S = 0.5
RESTART_BACKOFF_S = 1.0
MAX_FAILURES = 5
_RESOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,254}")
_CAS_ATTEMPTS = 5
_WORKDIR_PREFIX = "refserver-io-"


class Ownership(Protocol):
    async def owner(self, kind: str, resource_id: str) -> NodeAddress: ...

    async def check_owner(
        self, kind: str, resource_id: str, context: grpc.aio.ServicerContext
    ) -> None: ...


class _Task(Protocol):
    counts: dict[str, int]
    checkpoint: metadata.Checkpoint

    async def run(self) -> bool: ...

    async def stop(self) -> None: ...


@dataclass
class _Running:
    record: ConnectorRecord
    future: asyncio.Task[None] | None = None
    task: _Task | None = None
    stopping: bool = False
    counts: dict[str, int] = field(default_factory=dict)


class ConnectorService:
    def __init__(
        self,
        store: Store_pb2_grpc.StoreStub,
        membership: Membership,
        ownership: Ownership,
        defects: frozenset[str],
        node: NodeAddress,
        connectors: ConnectorCatalog,
        workdir: Path | None = None,
    ) -> None:
        self._store = store
        self._membership = membership
        self._ownership = ownership
        self._defects = defects
        self._node = node
        self._catalog = connectors
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._running: dict[str, _Running] = {}
        self._logs: dict[str, TaskLog] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # Life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _sweep_stale_workdirs()
        self._membership.subscribe(self._on_member)
        self._loop_task = asyncio.create_task(self._reconcile_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await asyncio.gather(*(self._stop_task(name) for name in list(self._running)))
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _root(self) -> Path:
        """The folder for connector config files, made on first use (most nodes of a test
        cluster never run a connector)."""
        if self._workdir is None:
            self._workdir = self._given_workdir or Path(
                tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        return self._workdir

    def _on_member(self, member: Member) -> None:
        # Gossip may call from its own thread or loop; wake the reconcile loop safely.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # Reconciliation ----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except grpc.RpcError as error:
                log.warning("connector reconcile: store unavailable (%s)", error.code())
            except Exception:  # one bad round must not end the IO role of the node
                log.exception("connector reconcile failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_S)
            self._wake.clear()

    async def reconcile(self) -> None:
        """Start the RUNNING connectors this node owns, stop every other local task."""
        if not self._membership.is_ready():
            # Before the cluster is initialised (or this node has joined) its view is
            # partial, and an owner computed from it would move tasks needlessly.
            return
        wanted: dict[str, ConnectorRecord] = {}
        for versioned in await metadata.load_all(self._store):
            record = versioned.record
            if record.status != metadata.RUNNING:
                continue
            try:
                owner = await self._ownership.owner("connector", record.name)
            except Exception as error:  # no alive node in the view: run nothing
                log.warning("no owner for connector %s: %s", record.name, error)
                continue
            if owner.id == self._node.id:
                wanted[record.name] = record
        stops = []
        for name, running in list(self._running.items()):
            keep = wanted.get(name)
            if keep is None or keep.task_id != running.record.task_id or \
                    (running.future is not None and running.future.done()):
                stops.append(self._stop_task(name, "no longer owned or not RUNNING"
                                             if keep is None else "restarting"))
        # Concurrently: a sink's clean stop drains its destination (seconds under load),
        # and a source paused in the same request must not keep reading meanwhile.
        await asyncio.gather(*stops)
        for name, record in wanted.items():
            if name not in self._running:
                self._start_task(record)

    def _log_of(self, name: str) -> TaskLog:
        return self._logs.setdefault(name, TaskLog())

    def _start_task(self, record: ConnectorRecord) -> None:
        running = _Running(record)
        self._running[record.name] = running
        self._log_of(record.name).add(
            f"runtime: node {self._node.id} takes task {record.task_id} of {record.kind} "
            f"connector {record.name!r} ({record.target})")
        running.future = asyncio.create_task(self._supervise(running))

    async def _stop_task(self, name: str, why: str = "stopping") -> None:
        running = self._running.pop(name, None)
        if running is None:
            return
        running.stopping = True
        self._log_of(name).add(f"runtime: node {self._node.id} stops the task ({why})")
        if running.task is not None:
            await running.task.stop()
        if running.future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(running.future), 20.0)
            except (TimeoutError, Exception):
                running.future.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running.future
        # The task has ended here (its program exited, its last appends and checkpoint are
        # done): what a caller waiting for a paused connector to settle looks for.
        self._log_of(name).add(f"runtime: node {self._node.id} stopped the task ({why})")

    async def _supervise(self, running: _Running) -> None:
        record = running.record
        task_log = self._log_of(record.name)
        failures = 0
        while not running.stopping:
            task: _Task | None = None
            try:
                task = running.task = self._make_task(record, await self._stream_of(record))
                if running.stopping:
                    return
                done = await task.run()
                if done and record.kind == "SOURCE" and not running.stopping:
                    await self._set_status(record, metadata.COMPLETED)
                    return
                if running.stopping:
                    return
                failures += 1
            except LostCheckpoint as error:
                task_log.add(f"runtime: {error}; another node runs this connector now")
                return
            except (ConnectorFailed, NoSuchStream, BadConfig, UnknownConnector,
                    BadBatch) as error:
                failures += 1
                task_log.add(f"runtime: task failed ({failures}/{MAX_FAILURES}): {error}")
            except grpc.RpcError as error:
                # The store being away is not the connector's fault: retry, don't count.
                task_log.add(f"runtime: store unavailable ({error.code()}); retrying")
            finally:
                if task is not None:
                    running.counts = dict(task.counts)
            if running.stopping:
                return
            if task is not None and task.counts.get("states_checkpointed", 0) + \
                    task.counts.get("states_echoed", 0) > 0:
                failures = min(failures, 1)  # it made progress: not a crash loop
            if failures >= MAX_FAILURES:
                await self._set_status(record, metadata.FAILED,
                                       f"{failures} failures in a row; see GetConnectorLogs")
                return
            await asyncio.sleep(RESTART_BACKOFF_S)

    async def _stream_of(self, record: ConnectorRecord) -> Any:
        return await stream_shards(self._store, parse_config(record.config).stream)

    def _make_task(self, record: ConnectorRecord, stream: Any) -> _Task:
        config = parse_config(record.config)
        launch = self._catalog.lookup(record.kind, record.target)
        workdir = self._root() / f"{record.name}-{record.task_id}"
        task_log = self._log_of(record.name)
        if record.kind == "SOURCE":
            return SourceTask(self._store, record.name, config, launch, stream, workdir,
                              task_log.add, durable="ack-before-durable" not in self._defects,
                              checkpoint_first="io-checkpoint-before-append" in self._defects)
        return SinkTask(self._store, record.name, config, launch, stream, workdir, task_log.add)

    async def _set_status(self, record: ConnectorRecord, status: str, reason: str = "") -> None:
        """Move the stored status of this task's connector, unless it was changed since."""
        for _ in range(_CAS_ATTEMPTS):
            current = await metadata.load(self._store, record.name)
            if current is None or current.record.task_id != record.task_id or \
                    current.record.status != metadata.RUNNING:
                return
            if await metadata.update(self._store, current,
                                     current.record.with_status(status, reason)):
                self._log_of(record.name).add(f"runtime: status {status} {reason}".rstrip())
                return

    # RPCs ----------------------------------------------------------------------------------

    async def CreateConnector(self, request: api.CreateConnectorRequest,
                              context: grpc.aio.ServicerContext) -> api.Connector:
        try:
            return await self._create(request)
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable("creating a connector", error))
        except HStreamError as error:
            await errors.abort(context, error)

    async def _create(self, request: api.CreateConnectorRequest) -> api.Connector:
        if not _RESOURCE_NAME.fullmatch(request.name):
            raise _invalid(f"invalid connector name {request.name!r}: use 1-255 characters, "
                           "a letter first, then letters, digits, '-' or '_'")
        try:
            kind = kind_of(request.type)
            config = parse_config(request.config)
            launch = self._catalog.lookup(kind, request.target)
        except (ValueError, BadConfig, UnknownConnector) as error:
            raise _invalid(str(error)) from None
        try:
            await stream_shards(self._store, config.stream)
        except NoSuchStream as error:
            raise HStreamError(grpc.StatusCode.FAILED_PRECONDITION, errors.NON_EXISTENT_STREAM,
                               str(error)) from None
        if await metadata.load(self._store, request.name) is not None:
            raise _exists(request.name)
        # HStreamDB checks a connector's config before it stores the connector: a config
        # the connector rejects is an error of CreateConnector, not a FAILED task later.
        await self._check(launch, config.connector, request.name)
        record = ConnectorRecord(
            name=request.name, kind=kind, target=request.target, config=request.config,
            creation_time_ms=int(time.time() * 1000), status=metadata.RUNNING,
            task_id=str(uuid.uuid4()))
        if not await metadata.create(self._store, record):
            raise _exists(request.name)
        self._wake.set()
        return record.to_proto(node=await self._owner_text(record.name))

    async def _check(self, launch: Any, connector_config: dict[str, Any], name: str) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=f"check-{name}-", dir=self._root()))
        task_log = TaskLog(200)
        try:
            run = await AirbyteRun.start(launch, ["check", "--config", "@config.json"],
                                         {"config.json": connector_config}, workdir, task_log.add)
            messages = await run_to_end(run)
        except ConnectorFailed as error:
            raise _invalid(f"connector check failed: {error}: "
                           + " | ".join(task_log.lines()[-5:])) from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        statuses = [m.get("connectionStatus", {}) for m in messages
                    if m["type"] == "CONNECTION_STATUS"]
        if not statuses:
            raise _invalid(f"connector check of {launch.target} printed no CONNECTION_STATUS")
        if statuses[-1].get("status") != "SUCCEEDED":
            raise _invalid(f"connector check rejected the config: "
                           f"{statuses[-1].get('message', 'no message')}")

    async def _owner_text(self, name: str) -> str:
        try:
            owner = await self._ownership.owner("connector", name)
        except Exception:
            return ""
        return f"{owner.host}:{owner.port}"

    async def _proto(self, record: ConnectorRecord) -> api.Connector:
        # `offsets` shows the task's checkpoint: a source's Airbyte states (one per
        # stream), or a sink's next lsn per shard.
        saved = await metadata.Checkpoint(self._store, record.name).read()
        if saved is None:
            offsets = []
        elif isinstance(saved, list):
            offsets = [s for s in saved if isinstance(s, dict)]
        else:
            offsets = [saved]
        return record.to_proto(node=await self._owner_text(record.name), offsets=offsets)

    async def ListConnectors(self, request: api.ListConnectorsRequest,
                             context: grpc.aio.ServicerContext) -> api.ListConnectorsResponse:
        try:
            records = await metadata.load_all(self._store)
            protos = [await self._proto(v.record) for v in records]
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable("listing connectors", error))
        return api.ListConnectorsResponse(connectors=sorted(protos, key=lambda c: c.name))

    async def GetConnector(self, request: api.GetConnectorRequest,
                           context: grpc.aio.ServicerContext) -> api.Connector:
        try:
            current = await self._require(request.name)
            return await self._proto(current.record)
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable("reading a connector", error))
        except HStreamError as error:
            await errors.abort(context, error)

    async def GetConnectorSpec(self, request: api.GetConnectorSpecRequest,
                               context: grpc.aio.ServicerContext) -> api.GetConnectorSpecResponse:
        try:
            try:
                launch = self._catalog.lookup(kind_of(request.type), request.target)
            except (ValueError, UnknownConnector) as error:
                raise _invalid(str(error)) from None
            workdir = Path(tempfile.mkdtemp(prefix="spec-", dir=self._root()))
            task_log = TaskLog(200)
            try:
                messages = await run_to_end(
                    await AirbyteRun.start(launch, ["spec"], {}, workdir, task_log.add))
            except ConnectorFailed as error:
                raise HStreamError(grpc.StatusCode.INTERNAL, INVALID_CONNECTOR,
                                   f"{error}: " + " | ".join(task_log.lines()[-5:])) from None
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            specs = [m["spec"] for m in messages if m["type"] == "SPEC"]
            if not specs:
                raise HStreamError(grpc.StatusCode.INTERNAL, INVALID_CONNECTOR,
                                   f"connector {request.target} printed no SPEC")
        except HStreamError as error:
            await errors.abort(context, error)
        # HStreamDB returns the connector's config schema, the part a user fills in.
        spec = specs[-1].get("connectionSpecification", specs[-1])
        return api.GetConnectorSpecResponse(spec=json.dumps(spec))

    async def PauseConnector(self, request: api.PauseConnectorRequest,
                             context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._transition(request.name, {metadata.RUNNING}, metadata.STOPPED, context)
        return empty_pb2.Empty()

    async def ResumeConnector(self, request: api.ResumeConnectorRequest,
                              context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._transition(request.name, {metadata.STOPPED, metadata.FAILED},
                               metadata.RUNNING, context)
        return empty_pb2.Empty()

    async def _transition(self, name: str, allowed: set[str], to: str,
                          context: grpc.aio.ServicerContext) -> None:
        try:
            for _ in range(_CAS_ATTEMPTS):
                current = await self._require(name)
                if current.record.status not in allowed:
                    raise HStreamError(
                        grpc.StatusCode.FAILED_PRECONDITION, INVALID_CONNECTOR_STATUS,
                        f"connector {name!r} is {current.record.status}; it must be "
                        f"{' or '.join(sorted(allowed))} to become {to}")
                if await metadata.update(self._store, current, current.record.with_status(to)):
                    self._log_of(name).add(f"runtime: status {to} (requested on node "
                                           f"{self._node.id})")
                    self._wake.set()
                    return
            raise HStreamError(grpc.StatusCode.ABORTED, INVALID_CONNECTOR_STATUS,
                               f"connector {name!r} kept changing; retry")
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable(f"changing connector {name}", error))
        except HStreamError as error:
            await errors.abort(context, error)

    async def DeleteConnector(self, request: api.DeleteConnectorRequest,
                              context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        try:
            await self._require(request.name)
            await metadata.delete(self._store, request.name)
            forget = getattr(self._ownership, "forget", None)
            if forget is not None:  # the API layer's Ownership keeps owners in the store
                await forget("connector", request.name)
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable("deleting a connector", error))
        except HStreamError as error:
            await errors.abort(context, error)
        self._wake.set()
        return empty_pb2.Empty()

    async def GetConnectorLogs(self, request: api.GetConnectorLogsRequest,
                               context: grpc.aio.ServicerContext) -> api.GetConnectorLogsResponse:
        try:
            await self._require(request.name)
            if request.name not in self._logs:
                # The logs live on the node that runs the task; point the client there.
                await self._ownership.check_owner("connector", request.name, context)
        except grpc.RpcError as error:
            await errors.abort(context, _store_unavailable("reading a connector", error))
        except HStreamError as error:
            await errors.abort(context, error)
        return api.GetConnectorLogsResponse(
            logs=self._log_of(request.name).text(request.begin, request.count))

    async def _require(self, name: str) -> metadata.Versioned:
        current = await metadata.load(self._store, name)
        if current is None:
            raise HStreamError(grpc.StatusCode.NOT_FOUND, CONNECTOR_NOT_FOUND,
                               f"connector {name!r} does not exist; ListConnectors shows "
                               "the existing ones")
        return current

    def local_tasks(self) -> dict[str, dict[str, int]]:
        """Connector name → counts of the tasks this node runs (for logs and tests)."""
        return {name: dict(r.task.counts) if r.task else dict(r.counts)
                for name, r in self._running.items()}


def _sweep_stale_workdirs() -> None:
    """Remove the work folders of nodes that died without cleaning up (SIGKILL): their
    names carry the node's pid, and a folder whose pid is gone is nobody's."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        pid_text = folder.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        try:
            owner = folder.stat().st_uid
        except FileNotFoundError:
            continue  # its node removed it (or another node's sweep did) since the glob
        if not pid_text.isdigit() or owner != os.getuid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _invalid(message: str) -> HStreamError:
    return HStreamError(grpc.StatusCode.INVALID_ARGUMENT, INVALID_CONNECTOR, message)


def _exists(name: str) -> HStreamError:
    return HStreamError(grpc.StatusCode.ALREADY_EXISTS, CONNECTOR_EXISTS,
                        f"connector {name!r} already exists; delete it first or choose "
                        "another name")


def _store_unavailable(what: str, error: grpc.RpcError) -> HStreamError:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
    return HStreamError(grpc.StatusCode.UNAVAILABLE, 0,
                        f"the store is unavailable while {what} ({code}); retry when it is back")
