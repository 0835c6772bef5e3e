"""Reachability: did each fault hit what the test is about? ("sometimes" properties)

A fault that lands on a node owning nothing the workload used, while no client op is in
flight, proves nothing: the run passes vacuously. Every nemesis start records what it hit
(harness.nemesis.roles: the nodes, and who owned every shard, subscription and connector
task of the workload just before). This checker reads that back and, per fault, finds:

* the roles the hit nodes held: ``shard-owner``, ``subscription-owner``,
  ``connector-task``, ``seed``, or ``store`` for a store fault (also as exact role strings,
  ``subscription-owner:<sub>``);
* the client ops in flight while it lasted (invoke..completion overlapping the fault, from
  its start to its stop or the next heal) that went to a hit node: ``in-flight-append``,
  ``in-flight-read`` (a shard the node owned), ``in-flight-fetch``, ``in-flight-consume``,
  ``in-flight-ack`` (a subscription the node owned); for a store fault every such op;
* ``unacked-delivery``: records a consumer of a subscription the node owned had been
  delivered and had not acked when the fault started (what a takeover must redeliver).

`check(ops, reached=(...))` is valid when one fault reached every named event, and
``"vacuous"`` otherwise -- a distinct verdict, neither pass nor fail. With nothing named it
only reports (valid True).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.checkers.result import Result, without_gc
from harness.history import History, Op, as_ops, pair_completions

NAME = "reach"
ROLE_EVENTS = ("shard-owner", "subscription-owner", "connector-task", "seed", "store")
IN_FLIGHT_FS = ("append", "read", "fetch", "consume", "ack")
EVENTS = (*ROLE_EVENTS, *(f"in-flight-{f}" for f in IN_FLIGHT_FS), "unacked-delivery")


class UnknownEvent(ValueError):
    pass


@dataclass
class FaultReach:
    """What one fault reached."""

    index: int  # the fault's start op
    name: str
    nodes: list[int]
    roles: dict[str, list[str]] = field(default_factory=dict)  # node -> roles it held
    events: dict[str, int] = field(default_factory=dict)  # event -> how many ops / records
    surveyed: bool = False

    def reached(self, event: str) -> bool:
        if event in self.events:
            return self.events[event] > 0
        # An exact role ("subscription-owner:sub-1") held by a hit node.
        return any(event in held for held in self.roles.values())

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "fault": self.name, "nodes": self.nodes,
                "roles": self.roles, "events": {k: v for k, v in self.events.items() if v},
                "surveyed": self.surveyed}

    def describe(self) -> str:
        held = "; ".join(f"node {n}: {', '.join(r) or 'no role'}" for n, r in self.roles.items())
        got = ", ".join(f"{k}={v}" for k, v in self.events.items() if v) or "nothing"
        where = f"nodes {self.nodes}" if self.nodes else "no server node"
        roles = held or ("surveyed" if self.surveyed else "not surveyed")
        return f"{self.name} (op {self.index}) hit {where} [{roles}], reached {got}"


def check_events(reached: Iterable[str]) -> list[str]:
    """Validate event names (an event or an exact role string); one line on a bad one."""
    out = []
    for event in reached:
        kind = event.split(":", 1)[0]
        if event not in EVENTS and not (":" in event and kind in ROLE_EVENTS):
            raise UnknownEvent(
                f"unknown reachability event {event!r}; known: {', '.join(EVENTS)} "
                "(or an exact role such as subscription-owner:<sub>)"
            )
        out.append(event)
    return out


def _fault_starts(ops: Sequence[Op]) -> list[tuple[Op, float]]:
    """Each fault's start invocation with the time it stopped (stop / heal / end)."""
    starts: list[tuple[Op, float]] = []
    open_faults: dict[str, int] = {}
    ends: dict[int, float] = {}
    for op in ops:
        if not op.is_nemesis or not isinstance(op.value, dict):
            continue
        action = op.value.get("action")
        if op.type == "invoke" and action == "start" and op.value.get("phase") in (None, "kill"):
            starts.append((op, math.inf))
            open_faults[op.f] = len(starts) - 1
        elif op.type != "invoke" and action == "stop" and op.f in open_faults:
            ends[open_faults.pop(op.f)] = op.time
        elif op.type != "invoke" and action == "heal":
            for i in open_faults.values():
                ends[i] = op.time
            open_faults.clear()
    return [(op, ends.get(i, math.inf)) for i, (op, _) in enumerate(starts)]


def _shard_of(value: Mapping[str, Any], completion: Op | None,
              ranges: Mapping[str, Sequence[Sequence[Any]]]) -> int | None:
    """The shard an append or read went to: recorded, else the key's place on the ring."""
    for source in (completion.value if completion is not None else None, value):
        if isinstance(source, dict) and isinstance(source.get("shard"), int):
            return int(source["shard"])
    key, stream = value.get("key"), value.get("stream")
    if not isinstance(key, str) or not isinstance(stream, str) or stream not in ranges:
        return None
    from harness.wire import key_hash

    position = key_hash(key)
    for shard_id, start, end in ranges[stream]:
        if int(start) <= position <= int(end):
            return int(shard_id)
    return None


def _targets(op: Op, completion: Op | None, hit: Mapping[str, Any]) -> int | None:
    """The node a client op went to, as far as the fault's survey tells."""
    owners = hit.get("owners") or {}
    v = op.value if isinstance(op.value, dict) else {}
    if op.f in ("append", "read"):
        shard = _shard_of(v, completion, hit.get("shards") or {})
        if shard is None:
            return None
        return owners.get(f"shard-owner:{v.get('stream')}/{shard}")
    sub = v.get("subscription")
    return owners.get(f"subscription-owner:{sub}") if isinstance(sub, str) else None


@without_gc
def analyse(history: History | Iterable[Op]) -> list[FaultReach]:
    """Per fault start in the history, what it reached."""
    ops = as_ops(history)
    pairs = pair_completions(ops)
    by_index = {op.index: op for op in ops}
    completion_of = {inv.index: by_index[c] for c, inv in pairs.items()}
    client = [op for op in ops if op.is_invoke and not op.is_nemesis and op.f in IN_FLIGHT_FS]
    out: list[FaultReach] = []
    for start, end in _fault_starts(ops):
        hit = start.value.get("hit") or {}
        nodes = [int(n) for n in hit.get("nodes") or start.value.get("nodes") or ()]
        reach = FaultReach(start.index, start.f, nodes, surveyed="owners" in hit)
        reach.roles = {str(k): list(v) for k, v in (hit.get("roles") or {}).items()}
        store = bool(hit.get("store"))
        events = dict.fromkeys(EVENTS, 0)
        for held in reach.roles.values():
            for role in held:
                kind = role.split(":", 1)[0]
                events[kind] = events.get(kind, 0) + 1
        if store:
            events["store"] += 1
        began = start.time
        for op in client:
            if op.time >= end:
                continue
            done = completion_of.get(op.index)
            if done is not None and done.time <= began:
                continue
            if store or _targets(op, done, hit) in nodes:
                events[f"in-flight-{op.f}"] += 1
        events["unacked-delivery"] = _unacked_at(ops, completion_of, began, hit, nodes)
        reach.events = events
        out.append(reach)
    return out


def _unacked_at(ops: Sequence[Op], completion_of: Mapping[int, Op], at: int,
                hit: Mapping[str, Any], nodes: Sequence[int]) -> int:
    """Records of subscriptions a hit node owned, delivered before `at` and not acked."""
    owners = hit.get("owners") or {}
    delivered: set[tuple[str, tuple[Any, ...]]] = set()
    for op in ops:
        if op.time >= at:
            break
        v = op.value if isinstance(op.value, dict) else {}
        sub = v.get("subscription")
        if not isinstance(sub, str) or owners.get(f"subscription-owner:{sub}") not in nodes:
            continue
        if op.f == "fetch" and op.type == "ok":
            delivered.update((sub, tuple(r["record_id"])) for r in v.get("records") or ()
                             if r.get("record_id") is not None)
        elif op.f == "ack" and op.is_invoke:
            delivered.difference_update((sub, tuple(r)) for r in v.get("record_ids") or ())
    return len(delivered)


def check(history: History | Iterable[Op], reached: Sequence[str] = ()) -> Result:
    """Valid when some fault reached every event in `reached`; "vacuous" when none did."""
    wanted = check_events(reached)
    faults = analyse(history)
    result = Result(valid=True, checker=NAME)
    result.figures["faults"] = [f.to_json() for f in faults]
    for event in EVENTS:
        result.counts[event] = sum(1 for f in faults if f.reached(event))
    result.notes = [f.describe() for f in faults]
    if not wanted:
        return result
    if any(all(f.reached(e) for e in wanted) for f in faults):
        result.figures["reached"] = list(wanted)
        return result
    result.valid = "vacuous"
    why = (
        "no fault in the history" if not faults
        else f"no fault reached all of {', '.join(wanted)}"
    )
    result.anomalies["vacuous"] = [{"wanted": list(wanted), "why": why}]
    result.counts["vacuous"] = 1
    result.notes.insert(0, f"vacuous: {why}")
    return result


def require_reached(history: History | Iterable[Op], reached: Sequence[str],
                    evidence: Any = None) -> Result:
    """In a test: judge reachability; a vacuous run ends the test as "vacuous" (a pytest
    skip whose reason starts with ``vacuous:``; the report shows it as its own outcome)."""
    result = check(history, reached)
    if evidence is not None:
        evidence.result(NAME, result)
    if result.valid == "vacuous":
        import pytest

        why = result.anomalies["vacuous"][0]["why"]
        pytest.skip(VACUOUS_PREFIX + "; ".join([why, *result.notes[1:]]))
    return result


VACUOUS_PREFIX = "vacuous: the faults did not reach what this test is about: "
