"""Move records from a source connector to a destination and account for every one.

``sync`` pipes a source's ``read`` straight into a destination's ``write`` (both real
processes, running concurrently as on the Airbyte platform) and counts what went in;
``account`` compares that with what the destination holds, keyed by primary key, using the
same words as the stream-set checker: **lost** (emitted, not written), **unexpected**
(written, never emitted) and **stale** (written, but not the last value emitted for the key).
The HStream pipeline (source → stream → sink through the cluster's connector RPCs) reuses
these pieces with the cluster in the middle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.io.runner import Connector

Key = tuple[Any, ...]
Keyed = dict[str, dict[Key, dict[str, Any]]]


def primary_keys(configured: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    """Stream name → primary-key paths (the configured ones, else the source's own)."""
    out = {}
    for c in configured["streams"]:
        pk = c.get("primary_key") or c["stream"].get("source_defined_primary_key") or []
        if not pk:
            raise ValueError(f"stream {c['stream']['name']!r} has no primary key to account by")
        out[c["stream"]["name"]] = [list(p) for p in pk]
    return out


def key_of(data: Mapping[str, Any], paths: Sequence[Sequence[str]]) -> Key:
    values = []
    for path in paths:
        node: Any = data
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(f"record has no primary-key field {'.'.join(path)!r}: {data}")
            node = node[part]
        values.append(node)
    return tuple(values)


def records_by_key(records: Iterable[Mapping[str, Any]],
                   configured: Mapping[str, Any]) -> Keyed:
    """Record payloads → stream → key → last data seen for that key."""
    pks = primary_keys(configured)
    out: Keyed = {name: {} for name in pks}
    for rec in records:
        out[rec["stream"]][key_of(rec["data"], pks[rec["stream"]])] = dict(rec["data"])
    return out


@dataclass
class SyncAccount:
    """What the source emitted and what the destination acknowledged (echoed states)."""

    emitted: Counter[str] = field(default_factory=Counter)
    emitted_by_key: Keyed = field(default_factory=dict)
    states_emitted: int = 0
    states_echoed: int = 0
    last_state_emitted: dict[str, Any] | None = None
    last_state_echoed: dict[str, Any] | None = None


def sync(source: Connector, source_config: Mapping[str, Any],
         destination: Connector, destination_config: Mapping[str, Any],
         configured: Mapping[str, Any], state: Any = None) -> SyncAccount:
    """One sync: source read piped into destination write; returns the accounting."""
    pks = primary_keys(configured)
    acct = SyncAccount(emitted_by_key={name: {} for name in pks})

    def forward() -> Iterator[dict[str, Any]]:
        # Runs on the destination's stdin feeder thread, record by record, so the source
        # is never read ahead of what the destination can take.
        for msg in source.read(source_config, configured, state):
            if msg["type"] == "RECORD":
                rec = msg["record"]
                acct.emitted[rec["stream"]] += 1
                acct.emitted_by_key[rec["stream"]][key_of(rec["data"], pks[rec["stream"]])] = \
                    dict(rec["data"])
                yield msg
            elif msg["type"] == "STATE":
                acct.states_emitted += 1
                acct.last_state_emitted = msg["state"]
                yield msg

    for out in destination.write(destination_config, configured, forward()):
        if out["type"] == "STATE":
            acct.states_echoed += 1
            acct.last_state_echoed = out["state"]
    return acct


@dataclass
class Accounting:
    """Per stream: keys lost, unexpected and stale (with examples), and the figures."""

    lost: dict[str, list[Key]]
    unexpected: dict[str, list[Key]]
    stale: dict[str, list[Key]]
    figures: dict[str, dict[str, int]]

    @property
    def valid(self) -> bool:
        return not any(self.lost.values()) and not any(self.unexpected.values()) \
            and not any(self.stale.values())

    def explain(self, limit: int = 5) -> str:
        lines = []
        for name, fig in sorted(self.figures.items()):
            lines.append(f"{name}: {json.dumps(fig)}")
            for kind in ("lost", "unexpected", "stale"):
                keys = getattr(self, kind)[name]
                if keys:
                    lines.append(f"  {kind}: {len(keys)} e.g. {keys[:limit]}")
        return "\n".join(lines)


def account(emitted: Keyed, written: Keyed) -> Accounting:
    """Compare the last emitted value per key with what was written, stream by stream."""
    lost, unexpected, stale, figures = {}, {}, {}, {}
    for name in sorted(set(emitted) | set(written)):
        e, w = emitted.get(name, {}), written.get(name, {})
        lost[name] = sorted((k for k in e if k not in w), key=repr)
        unexpected[name] = sorted((k for k in w if k not in e), key=repr)
        stale[name] = sorted((k for k in e if k in w and w[k] != e[k]), key=repr)
        figures[name] = {"emitted_keys": len(e), "written_keys": len(w),
                         "lost": len(lost[name]), "unexpected": len(unexpected[name]),
                         "stale": len(stale[name])}
    return Accounting(lost, unexpected, stale, figures)
