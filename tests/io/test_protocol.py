"""The Airbyte message schema: accepts what real connectors emit, rejects what they must not."""

from __future__ import annotations

import json

import pytest
from protocol_samples import INVALID, VALID

from harness.io.protocol import (
    ProtocolViolation,
    parse_message,
    schema_problems,
    validate_configured_catalog,
)


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
