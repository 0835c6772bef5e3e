"""Run an Airbyte connector — a local executable or a Docker image — and check what it says.

One invocation = one process: ``spec``, ``check --config``, ``discover --config``,
``read --config --catalog [--state]``, ``write --config --catalog`` (messages on stdin).
Every stdout line must be an AirbyteMessage (see ``harness.io.protocol``); anything else,
a non-zero exit, or overrunning the time limit raises ``ConnectorError`` naming the
connector, the command and the offending line, with the stderr file kept as evidence.

Each invocation leaves its inputs (config/catalog/state files), its stdout transcript and
its stderr in a numbered folder under the connector's work dir, so a failing acceptance
check can be replayed by hand with the same files.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.io.protocol import ProtocolViolation, parse_message

DEFAULT_TIMEOUTS_S: dict[str, float] = {
    "spec": 60.0,
    "check": 60.0,
    "discover": 120.0,
    "read": 600.0,
    "write": 600.0,
}
# Where input files appear inside a connector container.
CONTAINER_IO_DIR = "/airbyte/io"
_EVIDENCE_LINE_CHARS = 300
_EOF = object()


@dataclass(frozen=True)
class LocalExecutable:
    """A connector run as a program on this machine (e.g. a venv's entry point)."""

    path: Path

    def describe(self) -> str:
        return f"local {self.path}"


@dataclass(frozen=True)
class DockerImage:
    """A connector packaged as an image, run as ``docker run --rm -i IMAGE <cmd>``.

    ``network`` defaults to ``none``: a connector talks only to what the harness gives it
    (pass a private network the harness created to reach a cluster). ``mounts`` maps host
    folders to container folders, e.g. a destination's output folder.
    """

    image: str
    network: str = "none"
    mounts: tuple[tuple[Path, str], ...] = ()

    def describe(self) -> str:
        return f"image {self.image}"


Launch = LocalExecutable | DockerImage


class ConnectorError(RuntimeError):
    """A connector misbehaved: garbage output, invalid message, crash, or time-out."""

    def __init__(
        self,
        connector: str,
        command: str,
        problem: str,
        *,
        line_no: int | None = None,
        line: str | None = None,
        exit_code: int | None = None,
        stderr_path: Path | None = None,
        error_trace: str | None = None,
    ) -> None:
        self.connector = connector
        self.error_trace = error_trace
        self.command = command
        self.problem = problem
        self.line_no = line_no
        self.line = line
        self.exit_code = exit_code
        self.stderr_path = stderr_path
        parts = [f"connector {connector!r}, command `{command}`: {problem}"]
        if line is not None:
            shown = line if len(line) <= _EVIDENCE_LINE_CHARS else line[:_EVIDENCE_LINE_CHARS] + "…"
            parts.append(f"  offending stdout line {line_no}: {shown!r}")
        if exit_code is not None:
            parts.append(f"  exit code: {exit_code}")
        if stderr_path is not None:
            parts.append(f"  stderr: {stderr_path}")
            tail = _tail(stderr_path, 8)
            if tail:
                parts.append("  stderr tail:\n    " + "\n    ".join(tail))
        super().__init__("\n".join(parts))


def _tail(path: Path, n: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:_EVIDENCE_LINE_CHARS] for ln in lines[-n:]]


@dataclass
class Invocation:
    """What one connector process did: for evidence in reports and failure messages."""

    command: str
    folder: Path
    argv: list[str]
    exit_code: int | None = None
    duration_s: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def stderr_path(self) -> Path:
        return self.folder / "stderr.log"

    @property
    def stdout_path(self) -> Path:
        return self.folder / "stdout.jsonl"


class Connector:
    """A named connector with a launch method, a work dir for evidence, and time limits."""

    def __init__(
        self,
        name: str,
        launch: Launch,
        workdir: Path,
        timeouts_s: Mapping[str, float] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.launch = launch
        self.workdir = Path(workdir)
        self.timeouts_s = {**DEFAULT_TIMEOUTS_S, **(timeouts_s or {})}
        self.env = dict(env or {})
        self.invocations: list[Invocation] = []
        self._seq = itertools.count(1)
        self._checked_launch = False
        # Started processes whose iterator may never be consumed (or closed): `close`
        # kills them, so a discarded `read(...)` cannot leave a connector running.
        self._running: dict[int, tuple[subprocess.Popen[bytes], str, threading.Event]] = {}

    def close(self) -> None:
        """Kill every connector process of this Connector still running (idempotent)."""
        for proc, container, stopped in list(self._running.values()):
            self._kill(proc, container)
            stopped.set()
        self._running.clear()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connector({self.name!r}, {self.launch.describe()})"

    # -- the five protocol commands ---------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The ConnectorSpecification payload of the single SPEC message."""
        return self._single("spec", {}, "SPEC", "spec")

    def check(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The AirbyteConnectionStatus payload (``status`` SUCCEEDED or FAILED)."""
        return self._single("check", {"config": config}, "CONNECTION_STATUS",
                            "connectionStatus")

    def discover(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The AirbyteCatalog payload of the single CATALOG message."""
        return self._single("discover", {"config": config}, "CATALOG", "catalog")

    def read(
        self,
        config: Mapping[str, Any],
        catalog: Mapping[str, Any],
        state: Any = None,
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stream every message of ``read``; stopping early kills the connector."""
        files: dict[str, Any] = {"config": config, "catalog": catalog}
        if state is not None:
            files["state"] = state
        return self.run("read", files, timeout_s=timeout_s)

    def write(
        self,
        config: Mapping[str, Any],
        catalog: Mapping[str, Any],
        messages: Iterable[Mapping[str, Any]],
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Feed ``messages`` to ``write`` on stdin; stream what the destination emits."""
        return self.run("write", {"config": config, "catalog": catalog}, stdin=messages,
                        timeout_s=timeout_s)

    # -- machinery --------------------------------------------------------------------

    def _single(self, command: str, files: dict[str, Any], mtype: str, key: str) -> dict[str, Any]:
        found = [m for m in self.run(command, files) if m["type"] == mtype]
        inv = self.invocations[-1]
        if len(found) != 1:
            raise ConnectorError(
                self.name, inv.command,
                f"expected exactly one {mtype} message, got {len(found)}"
                f" (message counts: {dict(inv.counts)}; transcript: {inv.stdout_path})",
                stderr_path=inv.stderr_path,
            )
        payload: dict[str, Any] = found[0][key]
        return payload

    def _check_launch(self) -> None:
        if self._checked_launch:
            return
        launch = self.launch
        if isinstance(launch, LocalExecutable):
            if not launch.path.exists():
                raise ConnectorError(self.name, "<launch>",
                                     f"executable {launch.path} does not exist; install the"
                                     " connector first (python -m harness.io.install)")
            if not os.access(launch.path, os.X_OK):
                raise ConnectorError(self.name, "<launch>",
                                     f"{launch.path} is not executable (chmod +x it)")
        else:
            if shutil.which("docker") is None:
                raise ConnectorError(self.name, "<launch>",
                                     "the docker CLI is not on PATH; install Docker or run"
                                     " the connector as a local executable")
            probe = subprocess.run(["docker", "image", "inspect", launch.image],
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode != 0:
                detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConnectorError(
                    self.name, "<launch>",
                    f"docker image {launch.image!r} is not present locally ({detail}); build"
                    " it first (see docker/), or pull it where a registry is reachable",
                )
        self._checked_launch = True

    def _argv(self, command: str, folder: Path, files: Mapping[str, Any],
              container: str) -> tuple[list[str], list[str]]:
        """(argv to execute, argv as the connector sees it)."""
        launch = self.launch
        if isinstance(launch, LocalExecutable):
            inner = [command]
            for kind in files:
                inner += [f"--{kind}", str(folder / f"{kind}.json")]
            return [str(launch.path), *inner], inner
        inner = [command]
        for kind in files:
            inner += [f"--{kind}", f"{CONTAINER_IO_DIR}/{kind}.json"]
        outer = ["docker", "run", "--rm", "-i", "--name", container,
                 "--network", launch.network,
                 "--label", "hstream-conformance.role=connector",
                 "-v", f"{folder}:{CONTAINER_IO_DIR}:ro"]
        for host, inside in launch.mounts:
            outer += ["-v", f"{Path(host).resolve()}:{inside}"]
        for k, v in self.env.items():
            outer += ["-e", f"{k}={v}"]
        return [*outer, launch.image, *inner], inner

    def run(
        self,
        command: str,
        files: Mapping[str, Any],
        stdin: Iterable[Mapping[str, Any]] | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Start the connector eagerly and return an iterator over its validated messages.

        Launch problems (missing executable or image) raise here, not on first ``next``.
        """
        self._check_launch()
        seq = next(self._seq)
        folder = self.workdir / f"{seq:03d}-{command}"
        folder.mkdir(parents=True, exist_ok=True)
        for kind, doc in files.items():
            try:
                text = json.dumps(doc, indent=1)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"connector {self.name!r}, command {command!r}: the {kind} is not"
                    f" JSON-serializable ({exc}); pass plain dicts/lists/str/numbers"
                ) from None
            (folder / f"{kind}.json").write_text(text)
        container = f"hsc-conn-{self.name}-{uuid.uuid4().hex[:8]}"
        argv, inner = self._argv(command, folder, files, container)
        inv = Invocation(command=" ".join(inner), folder=folder, argv=argv)
        self.invocations.append(inv)
        limit = timeout_s if timeout_s is not None else self.timeouts_s.get(command, 600.0)
        return self._stream(inv, stdin, limit, container)

    def _stream(self, inv: Invocation, stdin: Iterable[Mapping[str, Any]] | None,
                limit: float, container: str) -> Iterator[dict[str, Any]]:
        env = {**os.environ, **self.env} if isinstance(self.launch, LocalExecutable) else None
        started = time.monotonic()
        # The child gets its own copy of the stderr descriptor; ours can close at once.
        with open(inv.stderr_path, "wb") as stderr_fh:
            proc = subprocess.Popen(
                inv.argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_fh,
                env=env,
                cwd=inv.folder,
                start_new_session=True,  # own process group: a time-out kills its children
            )
        lines: queue.Queue[object] = queue.Queue(maxsize=10_000)
        stopped = threading.Event()

        def pump_stdout() -> None:
            # Bounded queue = back-pressure on a fast connector; the put loop gives up once
            # the reader has gone (stopped), so this thread always ends and closes the pipe.
            assert proc.stdout is not None
            with proc.stdout:
                for raw in itertools.chain(proc.stdout, [_EOF]):
                    while not stopped.is_set():
                        try:
                            lines.put(raw, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stopped.is_set():
                        return

        # Started now, not on first `next`: a run whose iterator is never consumed still
        # has its pipe drained and closed once `close` kills it.
        threading.Thread(target=pump_stdout, daemon=True).start()
        self._running[proc.pid] = (proc, container, stopped)
        return self._messages(inv, proc, stdin, limit, container, started, lines, stopped)

    def _messages(self, inv: Invocation, proc: subprocess.Popen[bytes],
                  stdin: Iterable[Mapping[str, Any]] | None, limit: float, container: str,
                  started: float, lines: queue.Queue[object],
                  stopped: threading.Event) -> Iterator[dict[str, Any]]:
        stdin_errors: list[BaseException] = []

        def feed_stdin() -> None:
            assert proc.stdin is not None
            try:
                for msg in stdin or ():
                    proc.stdin.write(json.dumps(msg).encode() + b"\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the connector stopped reading; its exit code tells why
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                stdin_errors.append(exc)
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            finally:
                # A generator input (another connector's read) is closed here, which kills
                # that connector too when this one stopped reading early.
                close = getattr(stdin, "close", None)
                if callable(close):
                    close()

        if stdin is not None:
            threading.Thread(target=feed_stdin, daemon=True).start()
        deadline = started + limit
        line_no = 0
        last_error_trace: str | None = None
        finished = False

        def fail(problem: str, **kw: Any) -> ConnectorError:
            return ConnectorError(self.name, inv.command, problem,
                                  stderr_path=inv.stderr_path, **kw)

        try:
            with open(inv.stdout_path, "wb") as transcript:
                while True:
                    remaining = deadline - time.monotonic()
                    try:
                        item = lines.get(timeout=max(remaining, 0.0)) if remaining > 0 else None
                    except queue.Empty:
                        item = None
                    if item is None:
                        self._kill(proc, container)
                        raise fail(f"timed out after {limit:.1f}s (killed); last stdout line"
                                   f" was {line_no}; transcript: {inv.stdout_path}")
                    if item is _EOF:
                        break
                    assert isinstance(item, bytes)
                    transcript.write(item)
                    line_no += 1
                    try:
                        text = item.decode("utf-8").strip()
                    except UnicodeDecodeError as exc:
                        self._kill(proc, container)
                        raise fail(f"stdout is not UTF-8 ({exc.reason})", line_no=line_no,
                                   line=item.decode("utf-8", "replace")) from None
                    if not text:
                        continue  # blank lines carry nothing; platforms skip them too
                    try:
                        msg = parse_message(text)
                    except ProtocolViolation as exc:
                        self._kill(proc, container)
                        raise fail(f"malformed output: {exc}", line_no=line_no,
                                   line=text) from None
                    inv.counts[msg["type"]] += 1
                    if msg["type"] == "TRACE" and msg["trace"].get("type") == "ERROR":
                        last_error_trace = (msg["trace"].get("error") or {}).get("message")
                    yield msg
            remaining = deadline - time.monotonic()
            try:
                code = proc.wait(timeout=max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                self._kill(proc, container)
                raise fail(f"closed stdout but did not exit within the {limit:.1f}s limit"
                           " (killed)") from None
            inv.exit_code = code
            if code != 0:
                reason = f"; its last error trace: {last_error_trace!r}" if last_error_trace else ""
                raise fail(f"crashed: exited with code {code} after {line_no} stdout"
                           f" lines{reason}", exit_code=code, error_trace=last_error_trace)
            if stdin_errors:
                if isinstance(stdin_errors[0], ConnectorError):
                    # The input came from another connector (a source piped into this
                    # destination): its own error is the one that explains the failure.
                    raise stdin_errors[0]
                raise fail(f"could not feed stdin: {stdin_errors[0]!r}")
            finished = True
        finally:
            inv.duration_s = time.monotonic() - started
            if not finished:
                # Also reached when the caller stops iterating early (generator closed).
                self._kill(proc, container)
                if inv.exit_code is None:
                    inv.exit_code = proc.poll()
            self._running.pop(proc.pid, None)
            stopped.set()

    def _kill(self, proc: subprocess.Popen[bytes], container: str) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if isinstance(self.launch, DockerImage):
            # Killing the `docker run` client does not stop the container it started.
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
