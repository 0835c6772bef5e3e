"""Crash: SIGKILL a process of this machine that is no server node — a client driver, a
connector program a server runs — as the application or the task would crash.

Nothing restarts it: whoever owns it (the workload, the server's task runtime) notices and
recovers, which is what the test judges. Its stop and teardown have nothing to undo.
"""

from __future__ import annotations

import os
import signal

from harness.nemesis.base import Context, Family, NemesisError
from harness.nemesis.faults import FaultInstance


class Crash(Family):
    name = "crash"
    needs = ()
    kinds = ("crash",)

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        if action == "start":
            pid = instance.fault.attributes["pid"]
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                raise NemesisError(
                    f"{instance.name}: no process {pid} to crash (it has exited already)"
                ) from None
        return set(), set()
