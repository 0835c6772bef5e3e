"""A source task: `read` a source connector into a stream, checkpointing its STATE.

Exactly what makes a resume lossless: a STATE the connector emits covers every record it
emitted before it, so the task first appends all buffered records (and waits for the
store's acks), and only then writes that STATE as the connector's checkpoint. After a
crash the next run starts from the last checkpoint; the records appended after it are
appended again, so duplicates can appear only after the last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import records
from refserver.io.airbyte import AirbyteRun, ConnectorFailed, run_to_end
from refserver.io.catalog import ConnectorLaunch
from refserver.io.config import TaskConfig
from refserver.io.metadata import Checkpoint
from refserver.io.streams import StreamShards, append_batch
from refserver.protos import Store_pb2_grpc

# Records per BatchedRecord: big enough to amortise a store fsync, small enough that a
# pause or kill loses (re-sends) little.
BATCH_RECORDS = 100


def configure(catalog: dict[str, Any], wanted: str) -> tuple[dict[str, Any], list[str]]:
    """The configured catalog reading one Airbyte stream, and that stream's primary key
    (the first field of each key path). Incremental when the source supports it, so that a
    restart from a STATE continues instead of starting over."""
    streams = {s["name"]: s for s in catalog.get("streams", [])}
    if not wanted:
        if len(streams) != 1:
            raise ConnectorFailed(
                'the source has several streams; name one with "airbyte_stream" in the '
                f"connector config: {', '.join(sorted(streams))}")
        wanted = next(iter(streams))
    if wanted not in streams:
        raise ConnectorFailed(f"the source has no stream {wanted!r}; it has "
                              f"{', '.join(sorted(streams)) or 'none'}")
    stream = streams[wanted]
    incremental = "incremental" in stream.get("supported_sync_modes", [])
    configured: dict[str, Any] = {
        "stream": stream,
        "sync_mode": "incremental" if incremental else "full_refresh",
        "destination_sync_mode": "append",
    }
    if incremental and stream.get("default_cursor_field"):
        configured["cursor_field"] = stream["default_cursor_field"]
    key_paths = stream.get("source_defined_primary_key") or []
    return {"streams": [configured]}, [".".join(path) for path in key_paths]


def partition_key(data: dict[str, Any], key_fields: list[str]) -> str:
    """The HStream record key: the primary-key value (as text), so that every version of
    one row lands in one shard, in order."""
    values = []
    for field in key_fields:
        node: Any = data
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values.append(node)
    if not values:
        return ""
    if len(values) == 1 and isinstance(values[0], (str, int, float)):
        return str(values[0])
    return json.dumps(values, sort_keys=True)


def json_record(data: dict[str, Any], key: str) -> api.HStreamRecord:
    # A JSON record's payload is a binary serialized google.protobuf.Struct (protocol §1).
    struct = struct_pb2.Struct()
    struct.update(data)
    header = api.HStreamRecordHeader(flag=api.HStreamRecordHeader.Flag.JSON, key=key)
    return api.HStreamRecord(header=header, payload=struct.SerializeToString())


class SourceTask:
    """One source connector's task on this node. `run()` returns True when the read
    ended (the source is done), False when stopped before reading, and raises
    ConnectorFailed when the connector failed."""

    def __init__(self, store: Store_pb2_grpc.StoreStub, name: str, config: TaskConfig,
                 launch: ConnectorLaunch, stream: StreamShards, workdir: Path,
                 log: Callable[[str], None], durable: bool = True,
                 checkpoint_first: bool = False) -> None:
        self._store = store
        self.name = name
        self._config = config
        self._launch = launch
        self._stream = stream
        self._workdir = workdir
        self._log = log
        self._durable = durable
        # Seeded defect io-checkpoint-before-append (see run).
        self._checkpoint_first = checkpoint_first
        self.checkpoint = Checkpoint(store, name)
        self.run_handle: AirbyteRun | None = None
        self._stopping = False
        self.counts = {"records_read": 0, "records_appended": 0, "states_checkpointed": 0}

    async def run(self) -> bool:
        state = await self.checkpoint.read()
        states: list[dict[str, Any]] = list(state or [])
        discover = await AirbyteRun.start(
            self._launch, ["discover", "--config", "@config.json"],
            {"config.json": self._config.connector}, self._workdir, self._log)
        catalogs = [m["catalog"] for m in await run_to_end(discover) if m["type"] == "CATALOG"]
        if not catalogs:
            raise ConnectorFailed(f"{self._launch.target} discover printed no CATALOG")
        configured, key_fields = configure(catalogs[-1], self._config.airbyte_stream)
        if self._stopping:
            return False
        airbyte_stream = configured["streams"][0]["stream"]["name"]
        args = ["read", "--config", "@config.json", "--catalog", "@catalog.json"]
        files: dict[str, Any] = {"config.json": self._config.connector,
                                 "catalog.json": configured}
        if states:
            args += ["--state", "@state.json"]
            files["state.json"] = _state_file(states)
        self._log(f"runtime: reading {airbyte_stream!r} into stream {self._stream.name!r} "
                  f"from {'checkpoint ' + json.dumps(states) if states else 'the beginning'}")
        run = self.run_handle = await AirbyteRun.start(
            self._launch, args, files, self._workdir, self._log)
        pending: dict[int, list[api.HStreamRecord]] = {}
        # Only with the seeded defect: the records of the slice before the last STATE,
        # still unappended while that STATE is already the checkpoint.
        deferred: dict[int, list[api.HStreamRecord]] = {}
        try:
            async for message in run.messages():
                kind = message["type"]
                if kind == "RECORD":
                    record = message.get("record", {})
                    if record.get("stream") != airbyte_stream:
                        continue
                    data = record.get("data", {})
                    key = partition_key(data, key_fields)
                    pending.setdefault(self._stream.shard_for(key), []).append(
                        json_record(data, key))
                    self.counts["records_read"] += 1
                    if not self._checkpoint_first and \
                            sum(len(batch) for batch in pending.values()) >= BATCH_RECORDS:
                        await self._flush(pending)
                elif kind == "STATE":
                    states = _merge_state(states, message.get("state", {}))
                    if self._checkpoint_first:
                        # The defect: the STATE is stored at once, and the records it
                        # covers are appended only at the next STATE, so the checkpoint
                        # runs a slice ahead of the stream; a node crash loses that slice.
                        await self.checkpoint.write(states)
                        await self._flush(deferred)
                        deferred, pending = pending, {}
                    else:
                        await self._flush(pending)
                        await self.checkpoint.write(states)
                    self.counts["states_checkpointed"] += 1
            # Records after the last STATE: appended, but the read is repeated from the
            # last STATE if this run is not the last one.
            await self._flush(deferred)
            await self._flush(pending)
            code = await run.wait()
        finally:
            await run.stop()
        if code != 0:
            raise ConnectorFailed(f"{run.label} exited with code {code}")
        self._log(f"runtime: source read completed: {json.dumps(self.counts)}")
        return True

    async def stop(self) -> None:
        """Kill the read (what it emitted after its last STATE is read again on resume)."""
        self._stopping = True
        if self.run_handle is not None:
            await self.run_handle.stop()

    async def _flush(self, pending: dict[int, list[api.HStreamRecord]]) -> None:
        now = timestamp_pb2.Timestamp()
        now.FromMilliseconds(int(time.time() * 1000))
        for shard, batch in sorted(pending.items()):
            if not batch:
                continue
            encoded = records.encode(batch)
            encoded.publishTime.CopyFrom(now)
            await append_batch(self._store, shard, encoded, self._durable)
            self.counts["records_appended"] += len(batch)
        pending.clear()


def _merge_state(states: list[dict[str, Any]], state: dict[str, Any]) -> list[dict[str, Any]]:
    """The state list to pass to `read --state`: the latest STREAM state per stream, or the
    latest GLOBAL / LEGACY state alone."""
    if state.get("type") == "STREAM":
        descriptor = state.get("stream", {}).get("stream_descriptor", {})
        kept = [s for s in states if s.get("type") == "STREAM"
                and s.get("stream", {}).get("stream_descriptor", {}) != descriptor]
        clean = {k: v for k, v in state.items() if k in ("type", "stream")}
        return [*kept, clean]
    return [{k: v for k, v in state.items() if k in ("type", "global", "data")}]


def _state_file(states: list[dict[str, Any]]) -> Any:
    # A legacy state file is the bare `data` object; per-stream and global states are a list.
    if len(states) == 1 and states[0].get("type", "LEGACY") == "LEGACY":
        return states[0].get("data", {})
    return states
