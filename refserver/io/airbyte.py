"""One run of an Airbyte connector program as an asyncio subprocess.

The runtime talks to a connector exactly as the Airbyte platform does: argv in
(`read --config F --catalog F [--state F]`, `write --config F --catalog F`, `spec`), JSON
lines out on stdout, records in on stdin for `write`. Config files go into the task's own
folder. Every stderr line and every LOG/TRACE message goes to the task log, which is what
GetConnectorLogs shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from refserver.io.catalog import ConnectorLaunch

# Connectors print a record per line; airbyte records can be large (nested documents).
_LINE_LIMIT = 16 * 1024 * 1024
_STOP_GRACE_S = 5.0


def _die_with_parent() -> tuple[str, ...]:
    """A prefix that makes the kernel kill the connector when its node dies (even by
    SIGKILL), so a crashed node leaves no connector running behind it: util-linux's
    `setpriv --pdeathsig`, which survives the exec into the connector. (A preexec_fn
    calling prctl is not an option: forking a process that runs gRPC threads and then
    running Python code in the child can crash it.)"""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return (setpriv, "--pdeathsig", "KILL", "--") if setpriv else ()


class ConnectorFailed(RuntimeError):
    """The connector exited non-zero, printed a non-JSON line, or could not start."""


class AirbyteRun:
    """A started connector process; iterate `messages()` for its stdout messages."""

    def __init__(self, process: asyncio.subprocess.Process, label: str,
                 log: Callable[[str], None]) -> None:
        self.process = process
        self.label = label
        self._log = log
        self._stderr_pump = asyncio.create_task(self._pump_stderr())

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, launch: ConnectorLaunch, args: list[str], files: Mapping[str, Any],
                    workdir: Path, log: Callable[[str], None], stdin: bool = False) -> AirbyteRun:
        """Write `files` (name → JSON value) into `workdir` and run `launch args`, where an
        argument `@name` stands for the path of that file."""
        workdir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, value in files.items():
            path = workdir / name
            path.write_text(json.dumps(value))
            paths[f"@{name}"] = str(path)
        argv = [paths.get(arg, arg) for arg in args]
        if launch.image:
            env_flags = [flag for k, v in launch.env.items() for flag in ("-e", f"{k}={v}")]
            command = [*launch.argv, *env_flags, "-v", f"{workdir}:{workdir}", launch.image, *argv]
        else:
            command = [*launch.argv, *argv]
        program = command[0]
        command = [*_die_with_parent(), *command]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env={**os.environ, **launch.env},
                limit=_LINE_LIMIT,
                # Its own process group, so stopping a task also stops what the connector
                # spawned (e.g. a shell wrapper's child).
                start_new_session=True,
            )
        except OSError as error:
            raise ConnectorFailed(f"cannot start {launch.target} ({program}): {error}") from None
        label = f"{launch.target} {args[0]}"
        log(f"runtime: started {label} as pid {process.pid}")
        return cls(process, label, log)

    async def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self._log(f"{self.label} stderr: {line.decode(errors='replace').rstrip()}")

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Every stdout message; LOG and TRACE go to the task log and are yielded too."""
        assert self.process.stdout is not None
        while True:
            try:
                line = await self.process.stdout.readline()
            except ValueError:
                raise ConnectorFailed(
                    f"{self.label}: a stdout line exceeds {_LINE_LIMIT} bytes") from None
            if not line:
                return
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                message = json.loads(text)
            except json.JSONDecodeError:
                # The Airbyte protocol allows only messages on stdout; keep the evidence.
                self._log(f"{self.label} stdout (not JSON): {text[:500]}")
                continue
            if not isinstance(message, dict) or "type" not in message:
                self._log(f"{self.label} stdout (not a message): {text[:500]}")
                continue
            if message["type"] == "LOG":
                entry = message.get("log", {})
                self._log(f"{self.label} {entry.get('level', 'INFO')}: {entry.get('message', '')}")
            elif message["type"] == "TRACE":
                self._log(f"{self.label} trace: {json.dumps(message.get('trace', {}))[:1000]}")
            yield message

    async def send(self, message: Mapping[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def close_input(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await self.process.stdin.wait_closed()

    async def wait(self) -> int:
        code = await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_pump, 2.0)
        self._log(f"runtime: {self.label} (pid {self.pid}) exited with code {code}")
        return code

    async def stop(self) -> None:
        """Terminate the process group, kill it after a grace period; idempotent."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 15)
            try:
                await asyncio.wait_for(self.process.wait(), _STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, 9)
                await self.process.wait()
        self._stderr_pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._stderr_pump


async def run_to_end(run: AirbyteRun) -> list[dict[str, Any]]:
    """All messages of a short run (`spec`, `discover`); raises when it fails."""
    try:
        messages = [message async for message in run.messages()]
        code = await run.wait()
    finally:
        await run.stop()
    if code != 0:
        raise ConnectorFailed(f"{run.label} exited with code {code}; see the connector logs")
    return messages
