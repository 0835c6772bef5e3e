"""Each acceptance check passes a correct connector and fails the misbehaving one it is
meant to catch, with the evidence in the message."""

from __future__ import annotations

import pytest

from harness.io import acceptance as acc

GOOD = {"count": 12}


def _catalog(conn, mode="full_refresh"):
    return acc.configure_catalog(conn.discover(GOOD), mode)


def test_good_source_passes_every_check(fake):
    conn = fake("good")
    acc.check_spec(conn, GOOD)
    acc.check_connection_succeeds(conn, GOOD)
    assert acc.check_connection_fails_cleanly(conn, {"count": "x"}) == "count must be an integer"
    catalog = acc.check_discover(conn, GOOD)
    full = acc.configure_catalog(catalog, "full_refresh")
    first = acc.check_read(conn, GOOD, full, min_records=12)
    second = acc.check_read(conn, GOOD, full, min_records=12)
    acc.check_reads_agree(conn, first, second)
    inc = acc.configure_catalog(catalog, "incremental")
    before, after = acc.check_incremental(conn, {"count": 12}, inc, "items", inclusive=False)
    assert len(before.records) == 12 and after.records == []


def test_spec_rejecting_the_good_config_fails(fake):
    with pytest.raises(acc.AcceptanceFailure, match="good config does not validate.*count"):
        acc.check_spec(fake("good"), {"count": -1})


def test_check_crashing_on_bad_config_fails(fake):
    with pytest.raises(acc.AcceptanceFailure, match="must report CONNECTION_STATUS FAILED"):
        acc.check_connection_fails_cleanly(fake("check-crashes"), {"count": "x"})


def test_check_accepting_a_bad_config_fails(fake):
    with pytest.raises(acc.AcceptanceFailure, match="expected FAILED, got"):
        acc.check_connection_fails_cleanly(fake("good"), {"count": 1})


def test_records_violating_the_schema_fail(fake):
    conn = fake("schema-violation")
    with pytest.raises(acc.AcceptanceFailure) as err:
        acc.check_read(conn, GOOD, _catalog(conn))
    assert "record 0 (items) at id: '1' is not of type 'integer'" in str(err.value)
    assert "evidence: read" in str(err.value)


def test_too_few_records_fail(fake):
    conn = fake("good")
    with pytest.raises(acc.AcceptanceFailure, match="read gave 12 records, expected at least 50"):
        acc.check_read(conn, GOOD, _catalog(conn), min_records=50)


def test_state_moving_backwards_fails(fake):
    conn = fake("state-backwards")
    with pytest.raises(acc.AcceptanceFailure, match=r"cursor backwards: 5 → 3"):
        acc.check_read(conn, GOOD, _catalog(conn, "incremental"))


def test_nondeterministic_reads_fail(fake):
    conn = fake("nondeterministic")
    catalog = _catalog(conn)
    first = acc.check_read(conn, GOOD, catalog)
    second = acc.check_read(conn, GOOD, catalog)
    with pytest.raises(acc.AcceptanceFailure, match="two full-refresh reads .* disagree"):
        acc.check_reads_agree(conn, first, second)
    # ...and agree once the volatile field is declared.
    acc.check_reads_agree(conn, first, second, volatile_fields=["value"])


def test_incremental_ignoring_state_fails(fake):
    conn = fake("ignores-state")
    with pytest.raises(acc.AcceptanceFailure) as err:
        acc.check_incremental(conn, GOOD, _catalog(conn, "incremental"), "items")
    assert "returned 11 records of 'items' not at or after it" in str(err.value)
    assert "cursor 12" in str(err.value)


def test_strict_incremental_rejects_repeating_the_state_cursor(fake):
    # ignores-state re-emits 1..12; inclusive mode tolerates only the record equal to the
    # cursor (12), strict mode not even that one.
    conn = fake("ignores-state")
    with pytest.raises(acc.AcceptanceFailure, match="returned 12 records .* strictly after"):
        acc.check_incremental(conn, GOOD, _catalog(conn, "incremental"), "items",
                              inclusive=False)


def _write_messages():
    out = []
    for i in range(1, 7):
        out.append({"type": "RECORD", "record": {"stream": "items", "emitted_at": i,
                                                 "data": {"id": i}}})
        if i % 2 == 0:
            out.append({"type": "STATE", "state": {"type": "STREAM", "stream": {
                "stream_descriptor": {"name": "items"}, "stream_state": {"updated_at": i}}}})
    return out


def test_destination_state_echo(fake):
    conn = fake("good")
    catalog = _catalog(conn)
    echoed = acc.check_write_echoes_state(conn, GOOD, catalog, _write_messages())
    assert len(echoed) == 3
    with pytest.raises(acc.AcceptanceFailure, match="last state sent was not echoed"):
        acc.check_write_echoes_state(fake("drops-last-state"), GOOD, catalog, _write_messages())
    with pytest.raises(acc.AcceptanceFailure, match="never sent or is out of order"):
        acc.check_write_echoes_state(fake("extra-state"), GOOD, catalog, _write_messages())


def test_latest_states_keeps_the_last_per_stream():
    def st(name, n):
        return {"type": "STREAM", "stream": {"stream_descriptor": {"name": name},
                                             "stream_state": {"n": n}}}
    result = acc.ReadResult(states=[st("a", 1), st("b", 1), st("a", 2)])
    assert result.latest_states() == [st("a", 2), st("b", 1)]


def test_configure_catalog_refuses_unsupported_modes_and_unknown_streams():
    catalog = {"streams": [{"name": "s", "json_schema": {}, "supported_sync_modes":
                            ["full_refresh"]}]}
    with pytest.raises(ValueError, match="does not support incremental"):
        acc.configure_catalog(catalog, "incremental")
    with pytest.raises(ValueError, match=r"not in the catalog: \['t'\]"):
        acc.configure_catalog(catalog, streams=["t"])


def test_read_with_bad_config(fake):
    conn = fake("crash")  # exits 3 with an ERROR trace before finishing
    assert acc.check_read_refuses_bad_config(conn, GOOD, _catalog(conn)) == \
        "the upstream API went away"
    good = fake("good")
    with pytest.raises(acc.AcceptanceFailure, match="read with a bad config succeeded"):
        acc.check_read_refuses_bad_config(good, GOOD, _catalog(good))
    # The fake's KeyError on a missing `count` is a crash without any trace message.
    with pytest.raises(acc.AcceptanceFailure, match="without an ERROR trace message"):
        acc.check_read_refuses_bad_config(good, {"cuont": 1}, _catalog(good))
