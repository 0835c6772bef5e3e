"""Process faults on server nodes: kill -9 (and restart), SIGSTOP (and SIGCONT)."""

from __future__ import annotations

from harness.nemesis.base import Context, Family, Undo
from harness.nemesis.faults import FaultInstance


class Kill(Family):
    """`kill` stops nodes until the fault stops (restart); `restart` bounces them."""

    name = "kill"
    needs = ("signal",)
    kinds = ("kill", "restart")

    def __init__(self) -> None:
        self.killed: set[int] = set()

    def phases(self, instance: FaultInstance, action: str) -> tuple[str, ...]:
        # Two recorded ops, so the history has the node down for as long as it takes.
        if instance.fault.kind == "restart" and action == "start":
            return ("kill", "start")
        return (action,)

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        nodes = list(instance.nodes)
        bounce = instance.fault.kind == "restart"
        if action == "kill" or (action == "start" and not bounce):
            for n in nodes:
                ctx.cluster.kill(n)
                self.killed.add(n)
            return set(nodes), set()
        if action == "start" or (action == "stop" and not bounce):
            for n in nodes:
                if bounce or n in self.killed:
                    ctx.cluster.restart(n)
                    self.killed.discard(n)
            return set(), set(nodes)
        return set(), set()  # a restart is over once started again: its stop does nothing

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        for n in sorted(self.killed):
            undo.attempt(f"restart node {n}", ctx.cluster.restart, n)
        self.killed.clear()
        undo.done()

    def held_down(self) -> set[int]:
        return set(self.killed)


class Pause(Family):
    """`pause` SIGSTOPs nodes: sockets stay open, nothing answers; its stop SIGCONTs them."""

    name = "pause"
    needs = ("pause",)
    kinds = ("pause",)

    def __init__(self) -> None:
        self.paused: set[int] = set()

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        nodes = list(instance.nodes)
        if action == "start":
            for n in nodes:
                ctx.cluster.pause(n)
                self.paused.add(n)
            return set(nodes), set()
        resumed = [n for n in nodes if n in self.paused]
        for n in resumed:
            ctx.cluster.resume(n)
            self.paused.discard(n)
        return set(), set(nodes)

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        for n in sorted(self.paused):
            undo.attempt(f"resume node {n}", ctx.cluster.resume, n)
        self.paused.clear()
        undo.done()

    def held_down(self) -> set[int]:
        return set(self.paused)
