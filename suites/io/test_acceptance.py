"""Acceptance of Airbyte connectors (HStream IO's sources and sinks speak this protocol).

Parametrized over the connector definitions in fixtures/connectors/: every source gets
spec / check / discover / read / repeatability / incremental checks, every destination
spec / check / write-with-state-echo, and a destination with a readable output (SQLite)
is checked for what actually landed, by primary key. Connectors run as real processes
(their own venvs, installed on first use and cached) or as images.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.catalogue import CATALOGUE
from harness.io import acceptance as acc
from harness.io import pipeline
from harness.io.connectors import ConnectorDefinition, load_connectors
from harness.io.install import InstallError
from harness.io.runner import Connector

pytestmark = pytest.mark.slow


def _conformance(check_id: str) -> Callable[[F], F]:
    """The conformance mark, once ``check_id`` is in the catalogue.

    The io.* ids are proposed to the catalogue's owner; until they are listed there the
    tests still run, only without the report row (the report rejects unknown ids).
    """
    if check_id in CATALOGUE:
        return pytest.mark.conformance(check_id)  # type: ignore[no-any-return]
    return lambda fn: fn

F = TypeVar("F", bound=Callable[..., Any])
SOURCES = load_connectors(kind="source")
DESTINATIONS = load_connectors(kind="destination")


def _connector(defn: ConnectorDefinition, workdir: Path, data_dir: Path) -> Connector:
    try:
        return defn.connector(workdir, data_dir=data_dir)
    except InstallError as exc:
        pytest.fail(f"connector {defn.name} could not be installed:\n{exc}", pytrace=False)


@pytest.fixture(scope="module", params=SOURCES, ids=lambda d: d.name)
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[ConnectorDefinition, Connector, dict[str, Any]]]:
    defn: ConnectorDefinition = request.param
    workdir = tmp_path_factory.mktemp(defn.name)
    with _connector(defn, workdir / "runs", workdir) as conn:
        yield defn, conn, defn.good_config(workdir)


@pytest.fixture(scope="module")
def source_catalog(source: tuple[ConnectorDefinition, Connector, dict[str, Any]],
                   ) -> dict[str, Any]:
    _, conn, config = source
    return acc.check_discover(conn, config)


@_conformance("io.source.spec")
def test_source_spec_is_a_schema_that_accepts_the_good_config(source):
    defn, conn, config = source
    acc.check_spec(conn, config)


@_conformance("io.source.check")
def test_source_check_succeeds_with_good_config(source):
    _, conn, config = source
    acc.check_connection_succeeds(conn, config)


@_conformance("io.source.check-bad-config")
def test_source_check_reports_failed_for_bad_config(source, tmp_path):
    defn, conn, _ = source
    bad = defn.bad_config_for(tmp_path)
    if bad is None:
        pytest.skip(f"{defn.source_file.name} defines no [bad_config]")
    acc.check_connection_fails_cleanly(conn, bad)


@_conformance("io.source.read-bad-config")
def test_source_read_with_bad_config_fails_with_a_reason(source, source_catalog, tmp_path):
    defn, conn, _ = source
    bad = defn.bad_config_for(tmp_path)
    if bad is None:
        pytest.skip(f"{defn.source_file.name} defines no [bad_config]")
    configured = acc.configure_catalog(source_catalog, "full_refresh")
    reason = acc.check_read_refuses_bad_config(conn, bad, configured)
    assert reason.strip(), "the ERROR trace has an empty message"


@_conformance("io.source.discover")
def test_source_discover_gives_a_valid_catalog(source_catalog):
    assert source_catalog["streams"], "discover gave no streams"


@_conformance("io.source.read")
def test_source_full_refresh_records_match_schemas(source, source_catalog):
    defn, conn, config = source
    configured = acc.configure_catalog(source_catalog, "full_refresh")
    result = acc.check_read(conn, config, configured, min_records=defn.min_records)
    streams = {c["stream"]["name"] for c in configured["streams"]}
    assert set(result.by_stream()) <= streams


@_conformance("io.source.read-repeatable")
def test_source_two_full_refresh_reads_agree(source, source_catalog):
    defn, conn, config = source
    if not defn.deterministic:
        pytest.skip(f"{defn.name} is not declared deterministic ([read] deterministic)")
    configured = acc.configure_catalog(source_catalog, "full_refresh")
    first = acc.check_read(conn, config, configured, min_records=defn.min_records)
    second = acc.check_read(conn, config, configured, min_records=defn.min_records)
    acc.check_reads_agree(conn, first, second, defn.volatile_fields)


@_conformance("io.source.incremental")
def test_source_incremental_read_from_last_state_returns_only_newer(source, source_catalog):
    defn, conn, config = source
    if defn.incremental is None:
        pytest.skip(f"{defn.name} declares no [incremental] stream")
    inc = defn.incremental
    configured = acc.configure_catalog(source_catalog, "incremental", streams=[inc.stream])
    configured["streams"][0]["cursor_field"] = list(inc.cursor_field)
    first, second = acc.check_incremental(conn, config, configured, inc.stream, inc.inclusive)
    assert first.states, "the first incremental read emitted no STATE"


# -- destinations ---------------------------------------------------------------------

USERS_STREAM = {
    "name": "users",
    "json_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                       "version": {"type": "integer"}},
    },
    "supported_sync_modes": ["full_refresh", "incremental"],
    "source_defined_primary_key": [["id"]],
}


def _users_catalog(mode: str) -> dict[str, Any]:
    return {"streams": [{"stream": USERS_STREAM, "sync_mode": "incremental",
                         "cursor_field": ["version"], "destination_sync_mode": mode,
                         "primary_key": [["id"]]}]}


def _record(uid: int, version: int) -> dict[str, Any]:
    return {"type": "RECORD", "record": {"stream": "users", "emitted_at": 1_700_000_000_000
                                         + version,
                                         "data": {"id": uid, "name": f"user-{uid}",
                                                  "version": version}}}


def _state(n: int) -> dict[str, Any]:
    return {"type": "STATE", "state": {"type": "STREAM", "stream": {
        "stream_descriptor": {"name": "users"}, "stream_state": {"version": n}}}}


def _messages() -> list[dict[str, Any]]:
    """30 records in 3 batches, each closed by a STATE; batch 2 rewrites ids 1-5."""
    out: list[dict[str, Any]] = []
    version = 0
    for batch, ids in enumerate([range(1, 11), [*range(11, 21), *range(1, 6)], range(21, 26)]):
        for uid in ids:
            version += 1
            out.append(_record(uid, version))
        out.append(_state(batch + 1))
    return out


@pytest.fixture(params=DESTINATIONS, ids=lambda d: d.name)
def destination(request: pytest.FixtureRequest, tmp_path: Path,
                ) -> Iterator[tuple[ConnectorDefinition, Connector, dict[str, Any]]]:
    defn: ConnectorDefinition = request.param
    with _connector(defn, tmp_path / "runs", tmp_path) as conn:
        yield defn, conn, defn.good_config(tmp_path)


@_conformance("io.destination.spec")
def test_destination_spec_is_a_schema_that_accepts_the_good_config(destination):
    _, conn, config = destination
    spec = acc.check_spec(conn, config)
    assert spec.get("supported_destination_sync_modes"), (
        f"a destination spec must list supported_destination_sync_modes: {spec}")


@_conformance("io.destination.check")
def test_destination_check_good_and_bad_config(destination, tmp_path):
    defn, conn, config = destination
    acc.check_connection_succeeds(conn, config)
    bad = defn.bad_config_for(tmp_path)
    if bad is not None:
        acc.check_connection_fails_cleanly(conn, bad)


def _sqlite_output(defn: ConnectorDefinition, config: dict[str, Any]) -> tuple[Path, str]:
    out = defn.extra.get("output") or {}
    if out.get("format") != "sqlite":
        pytest.skip(f"{defn.name}: no readable output declared ([output] format = \"sqlite\")")
    return Path(config[out["path_key"]]), config.get(out.get("table_prefix_key", ""), "")


def _rows(db: Path, table: str) -> dict[Any, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(f'SELECT pk, data FROM "{table}"').fetchall()
    finally:
        conn.close()
    return {tuple(json.loads(pk)): json.loads(data) for pk, data in rows}


@_conformance("io.destination.state-after-commit")
def test_destination_echoes_each_state_after_its_records_are_committed(destination):
    defn, conn, config = destination
    db, prefix = _sqlite_output(defn, config)
    messages = _messages()
    expected_after: list[set[int]] = []  # ids that must be durable when state i is echoed
    seen: set[int] = set()
    for m in messages:
        if m["type"] == "RECORD":
            seen.add(m["record"]["data"]["id"])
        else:
            expected_after.append(set(seen))
    echoed = 0
    for m in conn.write(config, _users_catalog("append_dedup"), messages):
        if m["type"] != "STATE":
            continue
        # Read while the destination is still running: what it promised by echoing must
        # already be readable by another connection.
        present = {pk[0] for pk in _rows(db, prefix + "users")}
        missing = expected_after[echoed] - present
        assert not missing, (
            f"{defn.name} echoed state {echoed + 1} before committing ids {sorted(missing)};"
            f" evidence: {conn.invocations[-1].folder}")
        echoed += 1
    assert echoed == len(expected_after), (
        f"{defn.name} echoed {echoed} of {len(expected_after)} states;"
        f" evidence: {conn.invocations[-1].folder}")


@_conformance("io.destination.write")
def test_destination_write_lands_records_by_primary_key(destination):
    defn, conn, config = destination
    db, prefix = _sqlite_output(defn, config)
    messages = _messages()
    acc.check_write_echoes_state(conn, config, _users_catalog("append_dedup"), messages)
    latest: dict[int, dict[str, Any]] = {}
    for m in messages:
        if m["type"] == "RECORD":
            latest[m["record"]["data"]["id"]] = m["record"]["data"]
    rows = _rows(db, prefix + "users")
    got = {pk[0]: data for pk, data in rows.items()}
    assert got == latest, (
        f"{defn.name}: rows by primary key differ from the last record per id;"
        f" missing {sorted(set(latest) - set(got))}, unexpected {sorted(set(got) - set(latest))},"
        f" stale {sorted(k for k in got if k in latest and got[k] != latest[k])};"
        f" db: {db}")


# -- source → destination -------------------------------------------------------------

def _pairs() -> list[tuple[ConnectorDefinition, ConnectorDefinition]]:
    readable = [d for d in DESTINATIONS if (d.extra.get("output") or {}).get("format") == "sqlite"]
    return [(s, d) for s in SOURCES if s.incremental for d in readable]


@_conformance("io.sync.accounted")
@pytest.mark.parametrize(("source_defn", "destination_defn"), _pairs(),
                         ids=lambda d: d.name)
def test_sync_source_into_destination_loses_nothing(source_defn, destination_defn,
                                                    tmp_path):
    """Every record the source emitted lands, by primary key, with its last value; every
    state the source emitted is echoed back once the destination has committed it."""
    with _connector(source_defn, tmp_path / "source", tmp_path) as src, \
            _connector(destination_defn, tmp_path / "destination", tmp_path) as dst:
        _sync_and_account(source_defn, destination_defn, src, dst, tmp_path)


def _sync_and_account(source_defn: ConnectorDefinition, destination_defn: ConnectorDefinition,
                      src: Connector, dst: Connector, tmp_path: Path) -> None:
    src_config = source_defn.good_config(tmp_path)
    dst_config = destination_defn.good_config(tmp_path)
    catalog = acc.check_discover(src, src_config)
    assert source_defn.incremental is not None  # _pairs() keeps incremental sources only
    stream = source_defn.incremental.stream
    configured = acc.configure_catalog(catalog, "incremental", streams=[stream],
                                       destination_sync_mode="append_dedup")
    sync_account = pipeline.sync(src, src_config, dst, dst_config, configured)
    db, prefix = _sqlite_output(destination_defn, dst_config)
    written = {stream: _rows(db, prefix + stream)}
    verdict = pipeline.account(sync_account.emitted_by_key, written)
    evidence = f"source runs: {src.workdir}; destination runs: {dst.workdir}; db: {db}"
    assert sync_account.emitted[stream] >= source_defn.min_records, (
        f"the source emitted only {dict(sync_account.emitted)} records; {evidence}")
    assert verdict.valid, f"records not accounted for:\n{verdict.explain()}\n{evidence}"
    assert sync_account.states_echoed == sync_account.states_emitted > 0, (
        f"states emitted {sync_account.states_emitted}, echoed {sync_account.states_echoed};"
        f" {evidence}")
    assert sync_account.last_state_echoed == sync_account.last_state_emitted
