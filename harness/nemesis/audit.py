"""Did every fault a test asked for land in its history? (The suites' audit.)

Each `Nemesis` keeps `asked`, the (fault name, action) pairs it was asked for. A `Ledger`
open around a test collects the nemeses asked anything while it is open; `problems()`
then reads each one's history file and lists every asked fault that is not there as a
nemesis invocation with a completion. `unrecorded(asked, ops)` is that comparison alone,
a pure function of data.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from harness.history import Op, load_ops, pair_completions

if TYPE_CHECKING:
    from harness.nemesis.recording import Nemesis

_open: list[Ledger] = []
_lock = threading.Lock()


def note(nemesis: Nemesis) -> None:
    """Called by a nemesis whenever it is asked for something."""
    with _lock:
        for ledger in _open:
            if all(n is not nemesis for n in ledger.nemeses):
                ledger.nemeses.append(nemesis)


def unrecorded(asked: Iterable[tuple[str, str]], ops: Sequence[Op]) -> list[str]:
    """Each asked (fault, action) with no nemesis invocation of that fault and action in
    `ops`, and each nemesis invocation without a completion, as one line each.

    A fault asked n times needs n invocations (a restart's start is recorded as two).
    """
    nemesis_ops = [op for op in ops if op.process == "nemesis"]
    invoked = Counter((op.f, _action(op)) for op in nemesis_ops if op.type == "invoke")
    missing = []
    for (name, action), count in sorted(Counter(asked).items()):
        seen = invoked[(name, action)]
        if seen < count:
            missing.append(
                f"{name} {action}: asked {count} time(s), the history has {seen} invocation(s)"
            )
    completed = {inv.index for inv in pair_completions(nemesis_ops).values()}
    for op in nemesis_ops:
        if op.type == "invoke" and op.index not in completed:
            missing.append(f"{op.f} {_action(op)}: invoked (op {op.index}) but never completed")
    return missing


def _action(op: Op) -> Any:
    return op.value.get("action") if isinstance(op.value, dict) else None


class Ledger:
    """`with Ledger() as ledger: ...; ledger.problems()`: the nemeses asked for faults inside."""

    def __init__(self) -> None:
        self.nemeses: list[Nemesis] = []

    def __enter__(self) -> Ledger:
        with _lock:
            _open.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _open.remove(self)

    @property
    def asked(self) -> list[tuple[str, str]]:
        return [pair for nemesis in self.nemeses for pair in nemesis.asked]

    def problems(self, *, fault_test: bool = False) -> list[str]:
        """Why the faults asked for are not all in a history file, one line each; for a
        `fault_test`, also that it asked for none."""
        found = []
        if fault_test and not self.asked:
            found.append(
                "this fault test asked the nemesis for no fault; inject faults through a "
                "harness.nemesis.Nemesis given the test's history"
            )
        for nemesis in self.nemeses:
            faults = ", ".join(sorted({f"{name} {action}" for name, action in nemesis.asked}))
            history = nemesis.history
            if history is None:
                found.append(f"a nemesis without a history was asked for {faults}")
                continue
            if history.path is None:
                found.append(f"a nemesis recorded {faults} in a history kept only in memory")
                continue
            ops = load_ops(history.path)
            found += [f"{history.path}: {line}" for line in unrecorded(nemesis.asked, ops)]
        return found
