"""A sink task: feed a stream to a destination's `write`, checkpointing on echoed STATE.

The task reads every shard of the stream from its checkpoint (the next lsn per shard; a
new sink starts at the earliest record), writes each record as an Airbyte RECORD on the
destination's stdin and, after each round of reads, a STATE carrying the positions just
past what it sent. A destination echoes a STATE only once everything before it is durably
written, so the task moves its checkpoint to the positions of each echoed STATE and never
further: after a crash, re-sent records are only those after the last echo.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from HStream.Server import HStreamApi_pb2 as api

from refserver import records
from refserver.io.airbyte import AirbyteRun, ConnectorFailed
from refserver.io.catalog import ConnectorLaunch
from refserver.io.config import TaskConfig
from refserver.io.metadata import Checkpoint
from refserver.io.streams import StreamShards
from refserver.protos import Store_pb2, Store_pb2_grpc

# Entries per store Read: a batch is up to BATCH_RECORDS records of a few KB each, and
# a reply must stay under gRPC's default 4 MiB message limit.
READ_ENTRIES = 8
IDLE_POLL_S = 0.2
# How long a clean stop waits for the destination to commit and exit.
_DRAIN_S = 15.0
# Whole numbers within this bound are written as JSON integers (see `_plain`).
_SAFE_INTEGER = 2**53


def _plain(value: Any) -> Any:
    # A Struct has one number type (double); write whole numbers back as integers so that
    # integer columns and primary keys arrive in the destination as the source sent them.
    if isinstance(value, float) and value.is_integer() and abs(value) < _SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def record_data(record: api.HStreamRecord) -> dict[str, Any] | None:
    """The JSON object of a JSON record; None for a RAW record (a sink writes objects)."""
    if record.header.flag != api.HStreamRecordHeader.Flag.JSON:
        return None
    struct = struct_pb2.Struct()
    struct.ParseFromString(record.payload)
    return _plain(json_format.MessageToDict(struct))


class SinkTask:
    """One sink connector's task on this node; `run()` runs until stopped or failed."""

    def __init__(self, store: Store_pb2_grpc.StoreStub, name: str, config: TaskConfig,
                 launch: ConnectorLaunch, stream: StreamShards, workdir: Path,
                 log: Callable[[str], None]) -> None:
        self._store = store
        self.name = name
        self._config = config
        self._launch = launch
        self._stream = stream
        self._workdir = workdir
        self._log = log
        self.checkpoint = Checkpoint(store, name)
        self.run_handle: AirbyteRun | None = None
        self._stop_requested = asyncio.Event()
        self.counts = {"records_sent": 0, "states_sent": 0, "states_echoed": 0,
                       "raw_records_skipped": 0}

    def _catalog(self) -> dict[str, Any]:
        name = self._config.airbyte_stream or self._stream.name
        key = [[field] for field in self._config.primary_key]
        stream = {"name": name, "json_schema": {"type": "object"},
                  "supported_sync_modes": ["incremental"],
                  "source_defined_primary_key": key}
        return {"streams": [{
            "stream": stream, "sync_mode": "incremental",
            "destination_sync_mode": "append_dedup" if key else "append",
            "primary_key": key,
        }]}

    async def run(self) -> bool:
        saved = await self.checkpoint.read() or {}
        positions = {shard: int(saved.get("positions", {}).get(str(shard), 1))
                     for shard in self._stream.shards}
        catalog = self._catalog()
        airbyte_stream = catalog["streams"][0]["stream"]["name"]
        self._log(f"runtime: writing stream {self._stream.name!r} to {self._launch.target} "
                  f"as {airbyte_stream!r} from lsns {positions}")
        run = self.run_handle = await AirbyteRun.start(
            self._launch, ["write", "--config", "@config.json", "--catalog", "@catalog.json"],
            {"config.json": self._config.connector, "catalog.json": catalog},
            self._workdir, self._log, stdin=True)
        echoes = asyncio.create_task(self._follow_echoes(run))
        try:
            while not echoes.done() and not self._stop_requested.is_set():
                if await self._send_round(run, positions, airbyte_stream):
                    await self._send_state(run, positions)
                else:
                    await asyncio.wait({echoes}, timeout=IDLE_POLL_S)
            if self._stop_requested.is_set() and not echoes.done():
                # A clean stop: end the input so the destination commits and echoes the
                # last STATE, then wait for its echoes to be checkpointed.
                await self._send_state(run, positions)
                await run.close_input()
                await asyncio.wait_for(echoes, _DRAIN_S)
                return False
            await echoes  # re-raises what ended the destination
        except (BrokenPipeError, ConnectionResetError):
            with contextlib.suppress(Exception):
                await echoes
        finally:
            echoes.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await echoes
            await run.stop()
        code = run.process.returncode
        raise ConnectorFailed(f"{run.label} ended (exit code {code}) while the sink was running")

    async def _send_state(self, run: AirbyteRun, positions: dict[int, int]) -> None:
        await run.send({"type": "STATE", "state": {"type": "LEGACY", "data": {
            "hstream": {"positions": {str(s): p for s, p in positions.items()}}}}})
        self.counts["states_sent"] += 1

    async def _send_round(self, run: AirbyteRun, positions: dict[int, int],
                          airbyte_stream: str) -> bool:
        """Send what each shard has past its position; True when any position moved."""
        moved = False
        for shard in self._stream.shards:
            reply = await self._store.Read(Store_pb2.ReadReq(
                log_id=shard, from_lsn=positions[shard], max_entries=READ_ENTRIES))
            if reply.trim_point >= positions[shard]:
                self._log(f"runtime: shard {shard} was trimmed to {reply.trim_point}; records "
                          f"{positions[shard]}..{reply.trim_point} were never written")
                positions[shard] = reply.trim_point + 1
                moved = True
            for entry in reply.entries:
                batch = api.BatchedRecord()
                batch.ParseFromString(entry.payload)
                for record in records.decode(batch):
                    data = record_data(record)
                    if data is None:
                        self.counts["raw_records_skipped"] += 1
                        continue
                    await run.send({"type": "RECORD", "record": {
                        "stream": airbyte_stream, "data": data, "emitted_at": entry.timestamp_ms}})
                    self.counts["records_sent"] += 1
                positions[shard] = entry.lsn + 1
                moved = True
        return moved

    async def _follow_echoes(self, run: AirbyteRun) -> None:
        async for message in run.messages():
            if message["type"] != "STATE":
                continue
            data = (message.get("state") or {}).get("data") or {}
            echoed = data.get("hstream")
            if isinstance(echoed, dict) and "positions" in echoed:
                await self.checkpoint.write({"positions": echoed["positions"]})
                self.counts["states_echoed"] += 1
        await run.wait()

    async def stop(self) -> None:
        """Ask `run()` to end cleanly (it returns False once the destination is done)."""
        self._stop_requested.set()
