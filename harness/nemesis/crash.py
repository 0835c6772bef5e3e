"""Crash and freeze: SIGKILL, or SIGSTOP until the fault ends, a process of this machine that
is no server node (a client driver, a connector program a server runs), as the application
or the task would crash or stall.

Nothing restarts a crashed process: whoever owns it (the workload, the server's task runtime)
notices and recovers, which is what the test judges. A frozen process is continued (SIGCONT)
when its fault stops, or at teardown; one that died meanwhile (with its node, say) has
nothing to continue.
"""

from __future__ import annotations

import os
import signal

from harness.nemesis.base import Context, Family, NemesisError
from harness.nemesis.faults import FaultInstance


class Crash(Family):
    name = "crash"
    needs = ()
    kinds = ("crash", "freeze")

    def __init__(self) -> None:
        self._frozen: set[int] = set()

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        pid = instance.fault.attributes["pid"]
        if action == "start":
            try:
                os.kill(pid, signal.SIGKILL if instance.fault.kind == "crash" else signal.SIGSTOP)
            except ProcessLookupError:
                raise NemesisError(
                    f"{instance.name}: no process {pid} to {instance.fault.kind} "
                    "(it has exited already)"
                ) from None
            if instance.fault.kind == "freeze":
                self._frozen.add(pid)
        elif instance.fault.kind == "freeze":
            self._continue(pid)
        return set(), set()

    def teardown(self, ctx: Context) -> None:
        for pid in sorted(self._frozen):
            self._continue(pid)

    def _continue(self, pid: int) -> None:
        self._frozen.discard(pid)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # it died while frozen: nothing to continue
