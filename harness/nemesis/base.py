"""The nemesis protocol (Jepsen's setup / invoke / teardown, and compose).

A *family* injects one kind of fault (process, partition, toxic, store, join, crash). It says
what it needs from the runtime (`needs`: means of `Cluster.MEANS`), which fault kinds it
handles (`kinds`), and provides:

* `setup(ctx)` before the first fault;
* `invoke(ctx, instance, action) -> (down, up)`: start or stop one `FaultInstance`,
  returning the HServer ids it took down and brought back;
* `teardown(ctx)`: undo everything it broke, trying every undo, then raise one
  `TeardownError` listing what failed. A family is usable again after a teardown.

`compose(*families)` is one family that routes each fault kind to the family handling it.
Recording in a history and refusing for missing means are the composed `Nemesis`'s job
(harness.nemesis.recording), so a family only touches the cluster.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness import HarnessError

if TYPE_CHECKING:
    from harness.cluster import Cluster
    from harness.faults.toxiproxy import ToxiproxyHandle
    from harness.nemesis.faults import FaultInstance


class NemesisError(HarnessError):
    """A fault or schedule that cannot be built or applied; the message says why."""


class TeardownError(NemesisError):
    """Some undo failed while healing; the message lists each one."""


@dataclass
class Context:
    """What the families act on: the cluster handle and, once needed, its Toxiproxy API."""

    cluster: Cluster
    toxiproxy_handle: ToxiproxyHandle | None = None

    def toxiproxy(self) -> ToxiproxyHandle:
        if self.toxiproxy_handle is None:
            url = self.cluster.toxiproxy_url
            if not url:
                raise NemesisError(
                    "link faults need Toxiproxy: start the cluster with toxiproxy enabled"
                )
            from harness.faults.toxiproxy import connect_toxiproxy

            self.toxiproxy_handle = connect_toxiproxy(url)
        return self.toxiproxy_handle


class Family(abc.ABC):
    """One fault family; subclasses set `name`, `needs`, `kinds` and implement `invoke`."""

    name: str = ""
    needs: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def setup(self, ctx: Context) -> None:  # noqa: B027 - optional hook, empty by default
        """Before the first fault; nothing by default."""

    @abc.abstractmethod
    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        """Start or stop one fault instance: (nodes it took down, nodes it brought up)."""

    def teardown(self, ctx: Context) -> None:  # noqa: B027 - optional hook, empty by default
        """Undo everything this family broke; nothing to undo by default."""

    def phases(self, instance: FaultInstance, action: str) -> tuple[str, ...]:
        """The actions one requested action is carried out (and recorded) as, in order.

        Usually just the action; a restart is a kill then a start, so the history holds the
        node down for as long as the restart takes.
        """
        return (action,)

    def held_down(self) -> set[int]:
        """Nodes this family keeps down right now (no other fault's end brings them up)."""
        return set()

    def take_evidence(self) -> dict[str, Any]:
        """What the last invoke or teardown measured, for its completion in the history
        (e.g. the clock family's node clocks); handed out once. Nothing by default."""
        return {}


class Undo:
    """Collects undo failures so that every undo is tried before one error reports them."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.errors: list[str] = []

    def attempt(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    def done(self) -> None:
        if self.errors:
            raise TeardownError(f"{self.family}: " + "; ".join(self.errors))


@dataclass
class Composed(Family):
    """Families as one: each fault kind goes to the family that handles it."""

    families: tuple[Family, ...] = ()
    by_kind: dict[str, Family] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family in self.families:
            for kind in family.kinds:
                if kind in self.by_kind:
                    raise NemesisError(
                        f"fault kind {kind!r} is handled by both {self.by_kind[kind].name} "
                        f"and {family.name}"
                    )
                self.by_kind[kind] = family
        self.name = "+".join(f.name for f in self.families)
        self.kinds = tuple(self.by_kind)
        self.needs = tuple(dict.fromkeys(m for f in self.families for m in f.needs))

    def family_for(self, kind: str) -> Family:
        try:
            return self.by_kind[kind]
        except KeyError:
            raise NemesisError(
                f"no fault family here handles {kind!r}; families: "
                + ", ".join(f"{f.name} ({', '.join(f.kinds)})" for f in self.families)
            ) from None

    def setup(self, ctx: Context) -> None:
        for family in self.families:
            family.setup(ctx)

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        return self.family_for(instance.fault.kind).invoke(ctx, instance, action)

    def phases(self, instance: FaultInstance, action: str) -> tuple[str, ...]:
        return self.family_for(instance.fault.kind).phases(instance, action)

    def teardown(self, ctx: Context) -> None:
        """Every family's teardown, in order, whatever fails; then one error listing all."""
        errors: list[str] = []
        for family in self.families:
            try:
                family.teardown(ctx)
            except Exception as exc:
                errors.append(
                    str(exc) if isinstance(exc, TeardownError) else f"{family.name}: {exc}"
                )
        if errors:
            raise TeardownError("healing the cluster failed: " + "; ".join(errors))

    def held_down(self) -> set[int]:
        return set().union(*(f.held_down() for f in self.families))

    def take_evidence(self) -> dict[str, Any]:
        return {k: v for f in self.families for k, v in f.take_evidence().items()}


def compose(*families: Family) -> Composed:
    """One family routing each fault kind to the family that handles it (Jepsen's compose).

    Teardown runs in the order given, so put faults that hide others first (links before
    processes: a restarted node should find its links whole).
    """
    flat = [f for family in families for f in getattr(family, "families", None) or (family,)]
    return Composed(tuple(flat))
