"""Checkers: pure functions history -> Result (Jepsen's `checker`).

Each module has one `check(history, **options) -> Result`; `check_all` runs those that apply
to a history (or the ones named) and merges the verdicts: False beats "unknown" beats True.
Re-run on a saved history with `python -m harness.checkers <history.jsonl>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from harness import HarnessError
from harness.checkers import membership, order, queue, reach, stream_set, subscription
from harness.checkers.columns import shared_columns
from harness.checkers.result import Result, Validity, gc_paused, merge_valid
from harness.history import READ_FS, History, Op, as_ops, shared_ops

__all__ = [
    "CHECKERS",
    "CheckOptions",
    "CheckReport",
    "Result",
    "check_all",
    "applicable_checkers",
]


@dataclass
class CheckOptions:
    """What the target promises and the bounds to judge against (defaults: at-least-once)."""

    checkers: Sequence[str] | None = None  # None: every checker with ops to judge
    exactly_once: bool = False  # duplicated records fail the stream-set check
    linearizable: bool = False  # stale reads fail the stream-set check
    ack_timeout_s: float | None = None  # when subscribe ops do not record it
    slack_s: float | None = None  # the server's redelivery timer granularity
    grace_s: float = 1.0  # ack-to-redelivery race allowance
    membership_bound_s: float | None = None  # see membership.swim_bounds
    nodes: Sequence[Any] | None = None  # all HServer ids, if views may miss some
    false_suspicions_fail: bool = False
    membership_absent: str = "dead"  # what a member missing from a view means (or "suspect")
    reached: Sequence[str] = ()  # what some fault must have reached, else "vacuous" (reach)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> CheckOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise HarnessError(
                f"unknown checker option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(options or {}))


def _stream_set(ops: list[Op], o: CheckOptions) -> Result:
    return stream_set.check(ops, exactly_once=o.exactly_once, linearizable=o.linearizable)


def _order(ops: list[Op], o: CheckOptions) -> Result:
    return order.check(ops)


def _subscription(ops: list[Op], o: CheckOptions) -> Result:
    return subscription.check(
        ops, ack_timeout_s=o.ack_timeout_s, slack_s=o.slack_s, grace_s=o.grace_s
    )


def _queue(ops: list[Op], o: CheckOptions) -> Result:
    # Run when named (not by default): exactly_once states the delivery promise.
    promise = "exactly-once" if o.exactly_once else "at-least-once"
    return queue.check(ops, promise=promise, grace_s=o.grace_s)


def _membership(ops: list[Op], o: CheckOptions) -> Result:
    return membership.check(
        ops,
        bound_s=o.membership_bound_s,
        nodes=o.nodes,
        false_suspicions_fail=o.false_suspicions_fail,
        absent=o.membership_absent,
    )


def _reach(ops: list[Op], o: CheckOptions) -> Result:
    return reach.check(ops, reached=o.reached)


CHECKERS: dict[str, Callable[[list[Op], CheckOptions], Result]] = {
    stream_set.NAME: _stream_set,
    order.NAME: _order,
    subscription.NAME: _subscription,
    membership.NAME: _membership,
    queue.NAME: _queue,
    reach.NAME: _reach,
}


def applicable_checkers(ops: Iterable[Op]) -> list[str]:
    """The checkers that have something to judge in these ops, in CHECKERS order."""
    fs = {op.f for op in ops}
    names = []
    if "append" in fs or fs & READ_FS:
        names += [stream_set.NAME, order.NAME]
    if fs & {"fetch", "subscribe", "ack", "consume"}:
        names.append(subscription.NAME)
    if "view" in fs:
        names.append(membership.NAME)
    return names


@dataclass
class CheckReport:
    valid: Validity
    results: dict[str, Result]
    ops: int

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "ops": self.ops,
            "results": {name: r.to_json() for name, r in self.results.items()},
        }

    def table(self) -> str:
        """A verdict table: one row per checker with its non-zero anomaly counts."""
        rows = [("checker", "valid", "anomalies")]
        for name, r in self.results.items():
            bad = [f"{k}={r.counts.get(k, 0)}" for k in sorted(r.anomalies) if r.counts.get(k)]
            rows.append((name, str(r.valid), ", ".join(bad) or "-"))
        width = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
        for name, r in self.results.items():
            lines.extend(f"  {name}: {note}" for note in r.notes)
        verdict = verdict_word(self.valid)
        lines.append(f"verdict: {verdict} ({self.ops} ops)")
        return "\n".join(lines)


def verdict_word(valid: Validity) -> str:
    if valid is True:
        return "VALID"
    if valid == "vacuous":
        return "VACUOUS"
    return "INVALID" if valid is False else "UNKNOWN"


def check_all(
    history: History | Iterable[Op], options: CheckOptions | Mapping[str, Any] | None = None
) -> CheckReport:
    """Run the applicable (or the named) checkers and merge their verdicts."""
    opts = options if isinstance(options, CheckOptions) else CheckOptions.from_mapping(options)
    ops = as_ops(history)
    names = list(opts.checkers) if opts.checkers else applicable_checkers(ops)
    if opts.reached and reach.NAME not in names:
        names.append(reach.NAME)
    unknown = [n for n in names if n not in CHECKERS]
    if unknown:
        raise HarnessError(
            f"unknown checker(s) {', '.join(unknown)}; choose from {', '.join(CHECKERS)}"
        )
    # One read's record fields are taken once and shared by every checker (columns.py).
    with gc_paused(), shared_columns(), shared_ops(ops):
        results = {name: CHECKERS[name](ops, opts) for name in names}
    return CheckReport(
        valid=merge_valid(r.valid for r in results.values()), results=results, ops=len(ops)
    )
