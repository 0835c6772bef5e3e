"""Connectors in the store's metadata; servers keep none of it.

Keys: `connectors/{name}` holds what CreateConnector was given plus the wanted status;
`connectors/{name}/state` holds the task's checkpoint (a source's last durable Airbyte
STATE, a sink's next lsn per shard), written with compare-and-set so that a node that
lost the task cannot move it backwards. The node that owns a connector (ownership kind
"connector") runs its task; any node answers the RPCs from these keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from google.protobuf import timestamp_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver.protos import Store_pb2, Store_pb2_grpc

PREFIX = "connectors/"
RUNNING = "RUNNING"
STOPPED = "STOPPED"  # paused by PauseConnector (HStreamDB's name for it)
FAILED = "FAILED"
COMPLETED = "COMPLETED"  # a source whose read ended: the data is all in the stream


def connector_key(name: str) -> str:
    return f"{PREFIX}{name}"


def state_key(name: str) -> str:
    return f"{PREFIX}{name}/state"


@dataclass(frozen=True)
class ConnectorRecord:
    name: str
    kind: str  # SOURCE or SINK
    target: str
    config: str  # the JSON text CreateConnector was given
    creation_time_ms: int
    status: str
    task_id: str
    # Set on FAILED: why, for GetConnector and the logs.
    reason: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def from_json(raw: bytes) -> ConnectorRecord:
        return ConnectorRecord(**json.loads(raw))

    def with_status(self, status: str, reason: str = "") -> ConnectorRecord:
        return replace(self, status=status, reason=reason)

    def to_proto(self, node: str = "",
                 offsets: list[dict[str, Any]] | None = None) -> api.Connector:
        created = timestamp_pb2.Timestamp()
        created.FromMilliseconds(self.creation_time_ms)
        connector = api.Connector(
            name=self.name,
            type=self.kind,
            target=self.target,
            creationTime=created,
            status=self.status,
            config=self.config,
            taskId=self.task_id,
            node=node,
        )
        for offset in offsets or []:
            connector.offsets.add().update(offset)
        return connector


@dataclass(frozen=True)
class Versioned:
    record: ConnectorRecord
    version: int


async def load(store: Store_pb2_grpc.StoreStub, name: str) -> Versioned | None:
    value = await store.MetaGet(Store_pb2.MetaKey(key=connector_key(name)))
    if not value.found:
        return None
    return Versioned(ConnectorRecord.from_json(value.value), value.version)


async def load_all(store: Store_pb2_grpc.StoreStub) -> list[Versioned]:
    items = await store.MetaList(Store_pb2.MetaKey(key=PREFIX))
    return [
        Versioned(ConnectorRecord.from_json(item.value), item.version)
        for item in items.items
        if "/" not in item.key[len(PREFIX):]
    ]


async def create(store: Store_pb2_grpc.StoreStub, record: ConnectorRecord) -> bool:
    """False when a connector of that name exists already."""
    reply = await store.MetaPut(Store_pb2.MetaPutReq(
        key=connector_key(record.name), value=record.to_json(), expected_version=0))
    return bool(reply.ok)


async def update(store: Store_pb2_grpc.StoreStub, current: Versioned,
                 record: ConnectorRecord) -> bool:
    """Compare-and-set over `current`; False when someone changed it in between."""
    reply = await store.MetaPut(Store_pb2.MetaPutReq(
        key=connector_key(record.name), value=record.to_json(),
        expected_version=current.version))
    return bool(reply.ok)


async def delete(store: Store_pb2_grpc.StoreStub, name: str) -> bool:
    reply = await store.MetaDelete(Store_pb2.MetaDeleteReq(key=connector_key(name),
                                                           expected_version=-1))
    await store.MetaDelete(Store_pb2.MetaDeleteReq(key=state_key(name), expected_version=-1))
    return bool(reply.ok)


class Checkpoint:
    """A task's checkpoint: read once when the task starts, then moved forward by CAS."""

    def __init__(self, store: Store_pb2_grpc.StoreStub, name: str) -> None:
        self._store = store
        self._key = state_key(name)
        self._version = 0
        self.value: Any = None

    async def read(self) -> Any:
        got = await self._store.MetaGet(Store_pb2.MetaKey(key=self._key))
        self._version = got.version if got.found else 0
        self.value = json.loads(got.value) if got.found else None
        return self.value

    async def write(self, value: Any) -> None:
        """Raises LostCheckpoint when another writer moved it since this task read it:
        the task no longer owns the connector and must stop."""
        reply = await self._store.MetaPut(Store_pb2.MetaPutReq(
            key=self._key, value=json.dumps(value).encode(), expected_version=self._version))
        if not reply.ok:
            raise LostCheckpoint(f"checkpoint {self._key} was written by another task")
        self._version = reply.version
        self.value = value


class LostCheckpoint(RuntimeError):
    pass
