"""The Airbyte message schema: accepts what real connectors emit, rejects what they must not."""

from __future__ import annotations

import json

import pytest

from harness.io.protocol import (
    ProtocolViolation,
    parse_message,
    schema_problems,
    validate_configured_catalog,
)

VALID = [
    {"type": "RECORD", "record": {"stream": "s", "data": {"a": 1}, "emitted_at": 1}},
    {"type": "RECORD", "record": {"stream": "s", "namespace": None, "data": {},
                                  "emitted_at": 1, "meta": {"changes": []}}},
    {"type": "STATE", "state": {"type": "STREAM", "stream": {
        "stream_descriptor": {"name": "s"}, "stream_state": {"c": 1}},
        "sourceStats": {"recordCount": 10.0}}},
    {"type": "STATE", "state": {"type": "GLOBAL", "global": {"shared_state": {},
                                                             "stream_states": []}}},
    {"type": "STATE", "state": {"data": {"legacy": True}}},
    {"type": "LOG", "log": {"level": "WARN", "message": "careful"}},
    {"type": "SPEC", "spec": {"connectionSpecification": {"type": "object"}}},
    {"type": "CONNECTION_STATUS", "connectionStatus": {"status": "FAILED", "message": "no"}},
    {"type": "CATALOG", "catalog": {"streams": [{"name": "s", "json_schema": {},
                                                 "supported_sync_modes": ["incremental"]}]}},
    {"type": "TRACE", "trace": {"type": "ESTIMATE", "emitted_at": 1.5, "estimate": {
        "name": "s", "type": "STREAM", "row_estimate": 3}}},
    {"type": "TRACE", "trace": {"type": "STREAM_STATUS", "emitted_at": 1, "stream_status": {
        "stream_descriptor": {"name": "s"}, "status": "COMPLETE"}}},
    {"type": "CONTROL", "control": {"type": "CONNECTOR_CONFIG", "emitted_at": 1,
                                    "connectorConfig": {"config": {}}}},
]

INVALID = [
    ("nope", "not JSON"),
    ("[]", "JSON list, not an AirbyteMessage"),
    ({"record": {}}, "no 'type'; expected one of ['CATALOG', "),
    ({"type": "BANANA"}, "type 'BANANA'; expected one of"),
    ({"type": "RECORD"}, "'record' is a required property"),
    ({"type": "RECORD", "record": {"stream": "s", "data": [], "emitted_at": 1}},
     "record/data: [] is not of type 'object'"),
    ({"type": "STATE", "state": {"type": "STREAM"}}, "'stream' is a required property"),
    ({"type": "STATE", "state": {"type": "GLOBAL", "global": {}}},
     "'stream_states' is a required property"),
    ({"type": "LOG", "log": {"level": "LOUD", "message": "x"}}, "'LOUD' is not one of"),
    ({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "OK"}}, "'OK' is not one of"),
    ({"type": "CATALOG", "catalog": {"streams": [{"name": "s", "json_schema": {},
                                                  "supported_sync_modes": []}]}},
     "should be non-empty"),
    ({"type": "SPEC", "spec": {}}, "'connectionSpecification' is a required property"),
]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m["type"])
def test_valid_messages_parse(msg):
    assert parse_message(json.dumps(msg)) == msg


@pytest.mark.parametrize(("msg", "reason"), INVALID, ids=lambda v: str(v)[:30])
def test_invalid_messages_say_why(msg, reason):
    line = msg if isinstance(msg, str) else json.dumps(msg)
    with pytest.raises(ProtocolViolation) as err:
        parse_message(line)
    assert reason in str(err.value)


def test_configured_catalog_needs_sync_modes():
    stream = {"name": "s", "json_schema": {}, "supported_sync_modes": ["full_refresh"]}
    validate_configured_catalog({"streams": [
        {"stream": stream, "sync_mode": "full_refresh", "destination_sync_mode": "append"}]})
    with pytest.raises(ProtocolViolation, match="'destination_sync_mode' is a required"):
        validate_configured_catalog({"streams": [{"stream": stream, "sync_mode": "full_refresh"}]})


def test_schema_problems():
    assert schema_problems({"type": "object"}) == []
    assert "is not valid under any of the given schemas" in schema_problems({"type": "nope"})[0]
