"""The nemesis a suite uses: the fault families composed, every action recorded.

`Nemesis(cluster, history)` routes each `FaultInstance` to its family (harness.nemesis.base)
and records each action as a nemesis op pair in the history: ``process="nemesis"``, ``f`` =
the fault's name, value = the instance's JSON plus ``"action"`` (start/stop/heal, and
``"phase"`` when one action is carried out as several); the completion adds ``"down"`` and
``"up"``, the truth the membership checker judges against, and what the family measured
(`Family.take_evidence`: the clock family's ``"clock"``, each node's offset as it saw it).
A fault the runtime lacks the
means for is refused before anything happens (`UnsupportedFault`, recorded as ``fail``);
any other error may have hit some nodes already and is recorded as ``info``.
`teardown()` always heals everything every family broke, also after errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from harness.nemesis import audit
from harness.nemesis.base import Context, Family, NemesisError, TeardownError, compose
from harness.nemesis.clock import Clock
from harness.nemesis.crash import Crash
from harness.nemesis.disk import Disk
from harness.nemesis.faults import Fault, FaultInstance
from harness.nemesis.join import Join
from harness.nemesis.membership_changes import MembershipChanges
from harness.nemesis.partition import Partition
from harness.nemesis.process import Kill, Pause
from harness.nemesis.roles import Aimer
from harness.nemesis.store import Store
from harness.nemesis.stress import Stress
from harness.nemesis.toxic import Toxic

if TYPE_CHECKING:
    from harness.cluster import Cluster
    from harness.faults.toxiproxy import ToxiproxyHandle
    from harness.history import History, Op
    from harness.nemesis.generator import Schedule, Step

ACTIONS = ("start", "stop")


def default_families() -> list[Family]:
    """Every family, in teardown order: links and partitions first, so restarted nodes find
    their links whole; the store last, as it always was."""
    return [Toxic(), Partition(), Stress(), Pause(), Kill(), Clock(), Disk(), Store(), Join(),
            Crash(), MembershipChanges()]


class Nemesis:
    """Applies fault instances to a cluster, recording each action in a history.

    Not re-entrant: one schedule at a time. `asked` lists every (fault name, action) it was
    asked for, which the suites' audit compares with the history (harness.nemesis.audit).
    """

    def __init__(
        self,
        cluster: Cluster,
        history: History | None = None,
        *,
        toxiproxy: ToxiproxyHandle | None = None,
        families: Sequence[Family] | None = None,
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.ctx = Context(cluster, toxiproxy)
        self.families = compose(*(default_families() if families is None else families))
        self.asked: list[tuple[str, str]] = []
        self._evidence: dict[str, Any] = {}  # what the family measured (take_evidence)
        self.aimer = Aimer(cluster)
        # Late nodes not started yet are down until they join.
        self._down: set[int] = self._pending_late_nodes()
        self.families.setup(self.ctx)

    @classmethod
    def setup(cls, cluster: Cluster, history: History | None = None, **options: Any) -> Nemesis:
        return cls(cluster, history, **options)

    # -- what suites ask for
    def invoke(self, instance: FaultInstance, action: str = "start") -> Op | None:
        """Start or stop one fault instance; returns the (last) completion op."""
        if action not in ACTIONS:
            raise NemesisError(f"unknown nemesis action {action!r}; use start or stop")
        self._ask(instance.name, action)
        extra: dict[str, Any] = {}
        if action == "start":
            # Resolve a role-aimed fault now, and note what it hits (harness.nemesis.roles).
            ops = self.history.snapshot() if self.history is not None else []
            try:
                instance, extra = self.aimer.start(instance, ops)
            except NemesisError as exc:
                self._record(instance.name, {"action": action, **instance.to_json()},
                             partial(_raise, exc))
        else:
            instance = self.aimer.stop(instance)
        value = {"action": action, **instance.to_json(), **extra}
        family = self.families.family_for(instance.fault.kind)
        phases = family.phases(instance, action)
        completion = None
        for phase in phases:
            completion = self._record(
                instance.name,
                value if phases == (action,) else {**value, "phase": phase},
                partial(self._apply, family, instance, phase),
            )
        return completion

    def join(self, n: int) -> Op | None:
        """Start late node n (`ClusterSpec.late_nodes`), a brand-new server joining the
        running cluster; recorded as a `join` op whose completion has n in `up`."""
        return self.invoke(Fault("join").on(n), "start")

    def heal(self) -> Op | None:
        """Undo everything every family broke; recorded as one `heal` op."""
        self._ask("heal", "heal")
        self.aimer.healed()
        return self._record("heal", {"action": "heal"}, self._heal_all)

    def teardown(self) -> None:
        """Always heal: every undo is tried, then one NemesisError lists any that failed."""
        self.heal()

    def run(
        self,
        schedule: Schedule,
        *,
        client: Callable[[Step], None] | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Play `schedule` in real time (harness.nemesis.generator.play); heal at the end,
        always: its final heal step, or a teardown when it ended early."""
        from harness.nemesis.generator import play

        healed = False
        try:
            healed = play(schedule, self, client=client, stop=stop, clock=clock)
        finally:
            if not healed:
                self.teardown()

    # -- applying and recording
    def _ask(self, name: str, action: str) -> None:
        self.asked.append((name, action))
        audit.note(self)

    def _refuse_without_means(self, family: Family, name: str) -> None:
        from harness.cluster import UnsupportedFault

        for means in family.needs:
            reason = self.cluster.refusal(means)
            if reason:
                raise UnsupportedFault(f"{name} needs {means}: {reason}")

    def _apply(
        self, family: Family, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        self._refuse_without_means(family, instance.name)
        down, up = family.invoke(self.ctx, instance, action)
        self._evidence = family.take_evidence()
        # A node another fault still holds down is not back up.
        return down, up - self.families.held_down()

    def _heal_all(self) -> tuple[set[int], set[int]]:
        try:
            self.families.teardown(self.ctx)
        finally:
            self._evidence = self.families.take_evidence()
        # A late node that never joined stays down: healing does not start it.
        return set(), self._down - self._pending_late_nodes()

    def _pending_late_nodes(self) -> set[int]:
        return {n.id for n in getattr(self.cluster, "nodes", ()) if n.state == "pending"}

    def _record(
        self, name: str, value: dict[str, Any], effect: Callable[[], tuple[set[int], set[int]]]
    ) -> Op | None:
        inv = self.history.invoke("nemesis", name, value) if self.history is not None else None
        self._evidence = {}
        try:
            down, up = effect()
        except Exception as exc:
            if self.history is not None and inv is not None:
                from harness.cluster import UnsupportedFault
                from harness.history import describe_error

                # Refusals come before any effect: definitely not applied. Anything else may
                # have hit some nodes already, so the outcome is unknown.
                refused = isinstance(exc, UnsupportedFault) or (
                    isinstance(exc, NemesisError) and not isinstance(exc, TeardownError)
                )
                self.history.complete(
                    inv, "fail" if refused else "info", value, error=describe_error(exc)
                )
            raise
        up &= self._down  # only what was down can come back up
        self._down |= down
        self._down -= up
        if self.history is None or inv is None:
            return None
        return self.history.ok(
            inv, {**value, **self._evidence, "down": sorted(down), "up": sorted(up)})


def _raise(exc: Exception) -> tuple[set[int], set[int]]:
    raise exc
