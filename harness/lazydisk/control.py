"""The lazy disk's control channel: one JSON object per line over a unix socket.

Requests (`{"cmd": ...}`) and what they do:

* `lose-unsynced`: drop every unsynced write, as a power loss does; answers what was lost;
* `set`: a fault on one op (`op`: read, write, fsync, open, create, truncate) —
  `latency_ms`, and/or `errno` ("EIO", "ENOSPC" or a number) for the next `count` calls or
  with `probability` (0..1, drawn from `seed`);
* `clear`: every fault removed;
* `status`: the volatile files, the faults, and per op the calls, failures and delays.

Answers are `{"ok": true, ...}` or `{"ok": false, "error": "<one line>"}`. `DiskControl`
is the harness's client; `python -m harness.lazydisk.control SOCKET CMD [JSON]` is the same
from a shell (or `docker exec`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from harness import HarnessError
from harness.lazydisk.fs import FaultSpecError, LazyDiskState

CONTROL_TIMEOUT_S = 10.0


class DiskControlError(HarnessError):
    """The control channel is unreachable or refused a request; the message says which."""


def handle(state: LazyDiskState, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    try:
        if cmd == "lose-unsynced":
            return {"ok": True, "lost": state.lose_unsynced()}
        if cmd == "set":
            state.faults.set(
                str(request.get("op")), latency_ms=request.get("latency_ms"),
                errno=request.get("errno"), count=request.get("count"),
                probability=request.get("probability"), seed=request.get("seed"))
            return {"ok": True}
        if cmd == "clear":
            state.faults.clear()
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, **state.status()}
    except (FaultSpecError, TypeError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False,
            "error": f"unknown command {cmd!r}; use lose-unsynced, set, clear or status"}


def serve(state: LazyDiskState, path: str) -> socket.socket:
    """Listen on `path` in a daemon thread; returns the listening socket."""
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)

    def answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    request = json.loads(line)
                    reply = handle(state, request if isinstance(request, dict) else {})
                except json.JSONDecodeError as exc:
                    reply = {"ok": False, "error": f"not JSON: {exc}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, name="lazydisk-control", daemon=True).start()
    return server


# Runs argv where the socket is (a container's `exec`): (exit status, output).
Exec = Callable[[Sequence[str], float], tuple[int, str]]


# Control commands that may be sent twice with the effect of once (not lose-unsynced).
_IDEMPOTENT = frozenset({"status", "set", "clear"})


class DiskControl:
    """The harness's client of one lazy disk's control socket.

    With `via`, the socket is not on this machine (it is in the store's container): each
    request runs this module's command line there, through `via`.
    """

    def __init__(self, socket_path: str, via: Exec | None = None) -> None:
        self.socket_path = socket_path
        self.via = via

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self.via is not None:
            return self._request_via(self.via, cmd, args)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(CONTROL_TIMEOUT_S)
                conn.connect(self.socket_path)
                conn.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                with conn.makefile("rb") as stream:
                    line = stream.readline()
        except OSError as exc:
            raise DiskControlError(
                f"the lazy disk's control socket {self.socket_path} does not answer: {exc}; "
                "is its process (python -m harness.lazydisk) running?") from None
        if not line:
            raise DiskControlError(f"the lazy disk at {self.socket_path} closed without answer")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise DiskControlError(f"lazy disk refused {cmd}: {reply.get('error')}")
        return reply

    def _request_via(self, via: Exec, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        # Imported here: the control command run inside a container needs none of it.
        from harness.runtimes import ExecOutputLost, retrying_lost_output

        # -W: runpy warns that the package imported this module before running it as
        # __main__; the warning only muddles the output the reply is read from.
        argv = ["python", "-W", "ignore::RuntimeWarning", "-m", "harness.lazydisk.control",
                self.socket_path, cmd, json.dumps(args)]
        try:
            if cmd in _IDEMPOTENT:
                # A command that leaves the disk as it found it, or sets what it sets again,
                # is asked again when the exec lost its output (docker under load).
                code, output = retrying_lost_output(lambda: via(argv, CONTROL_TIMEOUT_S))
            else:
                code, output = via(argv, CONTROL_TIMEOUT_S)
        except ExecOutputLost as exc:
            raise DiskControlError(f"whether the lazy disk did {cmd} is unknown: {exc}") \
                from None
        except HarnessError as exc:
            raise DiskControlError(f"cannot reach the lazy disk's control socket "
                                   f"{self.socket_path}: {exc}") from None
        lines = output.strip().splitlines() or ["no output"]
        if code != 0:
            # main() prints the client's one-line error ("lazydisk control: ...") last.
            raise DiskControlError(lines[-1].removeprefix("lazydisk control: "))
        # The output is stdout and stderr together, and a runtime's exec may interleave
        # them mid-line (seen on docker: '{"ok": true}<frozen runpy>:128: RuntimeWarning
        # ...'): the reply is the JSON object that starts the last line starting with one.
        answer = next((line for line in reversed(lines) if line.startswith("{")), lines[-1])
        try:
            reply, _ = json.JSONDecoder().raw_decode(answer)
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            raise DiskControlError(f"the lazy disk's control command answered no JSON to "
                                   f"{cmd}: {answer}")
        return reply

    def lose_unsynced(self) -> dict[str, int]:
        lost: dict[str, int] = self.request("lose-unsynced")["lost"]
        return lost

    def set_fault(self, op: str, **args: Any) -> None:
        self.request("set", op=op, **args)

    def clear(self) -> None:
        self.request("clear")

    def status(self) -> dict[str, Any]:
        return self.request("status")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m harness.lazydisk.control SOCKET "
              "lose-unsynced|set|clear|status ['{\"op\": \"write\", \"errno\": \"EIO\"}']",
              file=sys.stderr)
        return 2
    try:
        extra = json.loads(args[2]) if len(args) == 3 else {}
        print(json.dumps(DiskControl(args[0]).request(args[1], **extra)))
    except (DiskControlError, json.JSONDecodeError) as exc:
        print(f"lazydisk control: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
