"""Acceptance checks for Airbyte connectors, in the spirit of Airbyte's own acceptance tests.

Each check runs a real connector through ``harness.io.runner`` (so every emitted line is
already protocol-valid) and then judges what the protocol cannot: that the spec accepts a
good config, that a bad config is reported as FAILED rather than crashing, that records
match their stream's schema, that state moves forward, that two seeded full-refresh reads
agree and that an incremental read from the last state returns only newer records; for a
destination, that STATE is echoed only after the records before it were committed.

A failed check raises ``AcceptanceFailure`` with the evidence: what was expected, what was
seen, and the invocation folders (inputs, stdout transcript, stderr) to replay it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema.validators import Draft7Validator

from harness.io.protocol import schema_problems, validate_configured_catalog
from harness.io.runner import Connector, ConnectorError, Invocation

_SHOW = 5  # how many offending items a failure message lists


class AcceptanceFailure(AssertionError):
    """A connector broke an acceptance rule; the message carries the evidence."""


def _evidence(conn: Connector, n: int = 1) -> str:
    invs = conn.invocations[-n:]
    return "; ".join(f"{i.command.split()[0]} → {i.folder}" for i in invs) or "no invocation"


def _fail(conn: Connector, what: str, n: int = 1) -> AcceptanceFailure:
    return AcceptanceFailure(f"{conn.name}: {what}\n  evidence: {_evidence(conn, n)}")


# -- spec / check / discover ----------------------------------------------------------

def check_spec(conn: Connector, good_config: Mapping[str, Any]) -> dict[str, Any]:
    """spec's connectionSpecification is a valid JSON schema and accepts the good config."""
    spec = conn.spec()
    schema = spec["connectionSpecification"]
    problems = schema_problems(schema)
    if problems:
        raise _fail(conn, f"connectionSpecification is not a valid JSON schema: {problems[0]}")
    errors = list(Draft7Validator(schema).iter_errors(good_config))
    if errors:
        shown = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
                          for e in errors[:_SHOW])
        raise _fail(conn, f"the good config does not validate against the spec: {shown}")
    return spec


def check_connection_succeeds(conn: Connector, config: Mapping[str, Any]) -> None:
    status = conn.check(config)
    if status["status"] != "SUCCEEDED":
        raise _fail(conn, f"check with the good config: expected SUCCEEDED, got {status}")


def check_connection_fails_cleanly(conn: Connector, bad_config: Mapping[str, Any]) -> str:
    """check with a bad config must answer CONNECTION_STATUS FAILED and exit 0."""
    try:
        status = conn.check(bad_config)
    except ConnectorError as exc:
        raise AcceptanceFailure(
            f"{conn.name}: check with a bad config must report CONNECTION_STATUS FAILED,"
            f" but the connector failed instead:\n{exc}"
        ) from None
    if status["status"] != "FAILED":
        raise _fail(conn, f"check with a bad config: expected FAILED, got {status}")
    if not status.get("message"):
        raise _fail(conn, "check with a bad config reported FAILED without a message saying why")
    return str(status["message"])


def check_read_refuses_bad_config(conn: Connector, bad_config: Mapping[str, Any],
                                  configured: Mapping[str, Any]) -> str:
    """read with a bad config must fail with an ERROR trace saying why (the platform shows
    that message to the user), not succeed or die silently."""
    try:
        result = read_all(conn, bad_config, configured)
    except ConnectorError as exc:
        if not exc.error_trace:
            raise AcceptanceFailure(
                f"{conn.name}: read with a bad config failed without an ERROR trace message"
                f" saying why:\n{exc}") from None
        return exc.error_trace
    raise _fail(conn, f"read with a bad config succeeded ({len(result.records)} records);"
                      " it must fail with an ERROR trace")


def _has_path(schema: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = schema
    for part in path:
        props = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(props, Mapping) or part not in props:
            return False
        node = props[part]
    return True


def check_discover(conn: Connector, config: Mapping[str, Any]) -> dict[str, Any]:
    """A non-empty catalog, unique stream names, valid stream schemas, and cursor/primary-key
    paths that exist in the schema they belong to."""
    catalog = conn.discover(config)
    streams = catalog["streams"]
    if not streams:
        raise _fail(conn, "discover returned a catalog without streams")
    names = Counter(s["name"] for s in streams)
    dupes = sorted(n for n, c in names.items() if c > 1)
    if dupes:
        raise _fail(conn, f"discover returned duplicate stream names: {dupes}")
    for s in streams:
        problems = schema_problems(s["json_schema"])
        if problems:
            raise _fail(conn, f"stream {s['name']!r}: json_schema is invalid: {problems[0]}")
        cursor = s.get("default_cursor_field") or []
        if s.get("source_defined_cursor") and cursor and not _has_path(s["json_schema"], cursor):
            raise _fail(conn, f"stream {s['name']!r}: default_cursor_field {cursor} is not a"
                              " property of its json_schema")
        for pk in s.get("source_defined_primary_key") or []:
            if not _has_path(s["json_schema"], pk):
                raise _fail(conn, f"stream {s['name']!r}: primary key path {pk} is not a"
                                  " property of its json_schema")
    return catalog


def configure_catalog(
    catalog: Mapping[str, Any],
    sync_mode: str = "full_refresh",
    streams: Iterable[str] | None = None,
    destination_sync_mode: str = "append",
) -> dict[str, Any]:
    """A ConfiguredAirbyteCatalog selecting ``streams`` (default all) in ``sync_mode``.

    Incremental streams use their default cursor; primary keys are the source's own.
    """
    wanted = set(streams) if streams is not None else None
    configured = []
    for s in catalog["streams"]:
        if wanted is not None and s["name"] not in wanted:
            continue
        if sync_mode not in s["supported_sync_modes"]:
            raise ValueError(f"stream {s['name']!r} does not support {sync_mode}"
                             f" (supports {s['supported_sync_modes']})")
        entry: dict[str, Any] = {
            "stream": s,
            "sync_mode": sync_mode,
            "destination_sync_mode": destination_sync_mode,
        }
        if sync_mode == "incremental":
            entry["cursor_field"] = list(s.get("default_cursor_field") or [])
        if s.get("source_defined_primary_key"):
            entry["primary_key"] = s["source_defined_primary_key"]
        configured.append(entry)
    if wanted is not None:
        missing = wanted - {c["stream"]["name"] for c in configured}
        if missing:
            raise ValueError(f"streams not in the catalog: {sorted(missing)}")
    doc = {"streams": configured}
    validate_configured_catalog(doc)
    return doc


# -- read -----------------------------------------------------------------------------

@dataclass
class ReadResult:
    """The records and states of one read, in emission order."""

    records: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    invocation: Invocation | None = None

    def by_stream(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            out.setdefault(r["stream"], []).append(r["data"])
        return out

    def latest_states(self) -> list[dict[str, Any]]:
        """What to pass as ``--state`` to resume: the last state of each stream (or the last
        global / legacy state), as the platform persists them."""
        latest: dict[str, dict[str, Any]] = {}
        for s in self.states:
            kind = s.get("type") or "LEGACY"
            key = f"STREAM:{_stream_key(s['stream']['stream_descriptor'])}" \
                if kind == "STREAM" else kind
            latest[key] = s
        return list(latest.values())


def _stream_key(descriptor: Mapping[str, Any]) -> str:
    ns = descriptor.get("namespace")
    return f"{ns}.{descriptor['name']}" if ns else str(descriptor["name"])


def read_all(conn: Connector, config: Mapping[str, Any], catalog: Mapping[str, Any],
             state: Any = None) -> ReadResult:
    result = ReadResult()
    for msg in conn.read(config, catalog, state):
        if msg["type"] == "RECORD":
            result.records.append(msg["record"])
        elif msg["type"] == "STATE":
            result.states.append(msg["state"])
    result.invocation = conn.invocations[-1]
    return result


def _compare_cursor(a: Any, b: Any) -> int:
    """-1/0/1 for cursor values: numbers numerically, ISO-8601 timestamps as instants."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        try:
            ta, tb = dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b)
            if (ta.tzinfo is None) == (tb.tzinfo is None):
                return (ta > tb) - (ta < tb)
        except ValueError:
            pass
        return (a > b) - (a < b)
    raise TypeError(f"cursor values of different kinds cannot be ordered: {a!r} vs {b!r}")


def _field(data: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_read(conn: Connector, config: Mapping[str, Any], configured: Mapping[str, Any],
               min_records: int = 1, state: Any = None) -> ReadResult:
    """Records belong to configured streams and match their schemas; states name configured
    streams and their cursors never move backwards."""
    result = read_all(conn, config, configured, state)
    streams = {c["stream"]["name"]: c for c in configured["streams"]}
    if len(result.records) < min_records:
        raise _fail(conn, f"read gave {len(result.records)} records, expected at least"
                          f" {min_records}")
    validators = {n: Draft7Validator(c["stream"]["json_schema"]) for n, c in streams.items()}
    bad: list[str] = []
    for i, rec in enumerate(result.records):
        if rec["stream"] not in streams:
            bad.append(f"record {i} is for unconfigured stream {rec['stream']!r}")
            continue
        for err in validators[rec["stream"]].iter_errors(rec["data"]):
            where = "/".join(map(str, err.absolute_path)) or "<top>"
            bad.append(f"record {i} ({rec['stream']}) at {where}: {err.message}")
            break
        if len(bad) >= _SHOW:
            break
    if bad:
        raise _fail(conn, "records do not conform to their stream schemas:\n    "
                    + "\n    ".join(bad))
    last_cursor: dict[str, Any] = {}
    for i, s in enumerate(result.states):
        if (s.get("type") or "LEGACY") != "STREAM":
            continue
        name = s["stream"]["stream_descriptor"]["name"]
        if name not in streams:
            raise _fail(conn, f"state {i} is for unconfigured stream {name!r}: {s}")
        cursor_path = streams[name].get("cursor_field") or []
        blob = s["stream"].get("stream_state") or {}
        value = _field(blob, cursor_path) if cursor_path else None
        if value is None:
            continue
        if name in last_cursor and _compare_cursor(value, last_cursor[name]) < 0:
            raise _fail(conn, f"state {i} moves stream {name!r} cursor backwards:"
                              f" {last_cursor[name]!r} → {value!r}")
        last_cursor[name] = value
    return result


def _strip(data: Any, volatile: Iterable[str]) -> Any:
    drop = set(volatile)
    return {k: v for k, v in data.items() if k not in drop}


def check_reads_agree(conn: Connector, first: ReadResult, second: ReadResult,
                      volatile_fields: Iterable[str] = ()) -> None:
    """Two full-refresh reads with the same seed emit the same records per stream (as
    multisets, ignoring ``volatile_fields``)."""
    volatile = tuple(volatile_fields)
    a, b = first.by_stream(), second.by_stream()
    problems = []
    for name in sorted(set(a) | set(b)):
        ca = Counter(json.dumps(_strip(d, volatile), sort_keys=True) for d in a.get(name, []))
        cb = Counter(json.dumps(_strip(d, volatile), sort_keys=True) for d in b.get(name, []))
        if ca != cb:
            only_a, only_b = ca - cb, cb - ca
            problems.append(
                f"stream {name!r}: {sum(ca.values())} vs {sum(cb.values())} records;"
                f" only in first: {sum(only_a.values())} (e.g. {next(iter(only_a), None)});"
                f" only in second: {sum(only_b.values())} (e.g. {next(iter(only_b), None)})"
            )
    if problems:
        raise _fail(conn, "two full-refresh reads with the same config disagree"
                    f" (ignoring {list(volatile)}):\n    " + "\n    ".join(problems), n=2)


def check_incremental(conn: Connector, config: Mapping[str, Any],
                      configured: Mapping[str, Any], stream: str,
                      inclusive: bool = True) -> tuple[ReadResult, ReadResult]:
    """Read, then read again from the last STATE: the second read's records of ``stream``
    are all at or after (``inclusive``) / strictly after the state's cursor."""
    entry = next((c for c in configured["streams"] if c["stream"]["name"] == stream), None)
    if entry is None or entry["sync_mode"] != "incremental":
        raise ValueError(f"stream {stream!r} must be configured incremental")
    cursor = entry["cursor_field"]
    first = check_read(conn, config, configured)
    states = first.latest_states()
    own = [s for s in states if s.get("type") == "STREAM"
           and s["stream"]["stream_descriptor"]["name"] == stream]
    if not own:
        raise _fail(conn, f"an incremental read emitted no STATE for stream {stream!r}"
                          f" (states seen: {len(first.states)})")
    state_cursor = _field(own[0]["stream"].get("stream_state") or {}, cursor)
    if state_cursor is None:
        raise _fail(conn, f"the last STATE of {stream!r} has no cursor {cursor}: {own[0]}")
    second = check_read(conn, config, configured, min_records=0, state=states)
    older = []
    for rec in second.records:
        if rec["stream"] != stream:
            continue
        value = _field(rec["data"], cursor)
        order = _compare_cursor(value, state_cursor) if value is not None else -1
        if order < 0 or (order == 0 and not inclusive):
            older.append(value)
    if older:
        rule = "at or after" if inclusive else "strictly after"
        raise _fail(conn, f"incremental read from the last STATE (cursor {state_cursor!r})"
                          f" returned {len(older)} records of {stream!r} not {rule} it,"
                          f" e.g. cursors {older[:_SHOW]}", n=2)
    return first, second


# -- destinations ---------------------------------------------------------------------

def check_write_echoes_state(dest: Connector, config: Mapping[str, Any],
                             configured: Mapping[str, Any],
                             messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The destination echoes the STATE messages it was sent, in order, ending with the
    last one (a destination may coalesce states, never reorder or invent them)."""
    sent = [m["state"] for m in messages if m["type"] == "STATE"]
    echoed = [m["state"] for m in dest.write(config, configured, messages)
              if m["type"] == "STATE"]
    it = iter(sent)
    for i, s in enumerate(echoed):
        if not any(s == candidate for candidate in it):
            raise _fail(dest, f"echoed state {i} was never sent or is out of order: {s}")
    if sent and (not echoed or echoed[-1] != sent[-1]):
        raise _fail(dest, f"the last state sent was not echoed: sent {len(sent)} states,"
                          f" echoed {len(echoed)}; last sent {sent[-1]}")
    return echoed
