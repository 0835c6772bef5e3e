"""The Airbyte protocol's message shapes as JSON Schema, and the validation of emitted lines.

Why a schema here and not ``airbyte-protocol-models``: those models pin pydantic (1 or 2
depending on the release) and a jsonschema range that clash with the harness's own
dependencies, and validating a connector with the same model library it was built with
would wave through exactly the bugs that library shares. So the harness checks every line
independently, with ``jsonschema`` against the definitions below.

The definitions are written from the Airbyte protocol specification, ``airbyte_protocol.yaml``
as released in airbyte-protocol-models 0.18.0 (protocol v0.x, the one every CDK-based
connector speaks). They keep its required fields, types and enums and allow additional
properties where it does (``additionalProperties: true`` throughout the spec). Two rules are
stricter than the YAML, because every Airbyte platform reads messages that way: the payload
named by ``type`` must be present (a RECORD without ``record`` is useless), and a state
message must carry a payload for its state type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema.validators import Draft7Validator

PROTOCOL_SOURCE = "airbyte_protocol.yaml, airbyte-protocol-models 0.18.0 (protocol v0.x)"

_STRING_ARRAY = {"type": "array", "items": {"type": "string"}}
_OPEN_OBJECT = {"type": "object"}

DEFINITIONS: dict[str, Any] = {
    "StreamDescriptor": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": ["string", "null"]}},
    },
    "SyncMode": {"type": "string", "enum": ["full_refresh", "incremental"]},
    "DestinationSyncMode": {
        "type": "string",
        "enum": ["append", "overwrite", "append_dedup"],
    },
    "AirbyteRecordMessage": {
        "type": "object",
        "required": ["stream", "data", "emitted_at"],
        "properties": {
            "namespace": {"type": ["string", "null"]},
            "stream": {"type": "string"},
            "data": _OPEN_OBJECT,
            "emitted_at": {"type": "integer"},
            "meta": {
                "type": ["object", "null"],
                "properties": {
                    "changes": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "required": ["field", "change", "reason"],
                            "properties": {
                                "field": {"type": "string"},
                                "change": {"enum": ["NULLED", "TRUNCATED"]},
                                "reason": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
    "AirbyteStreamState": {
        "type": "object",
        "required": ["stream_descriptor"],
        "properties": {
            "stream_descriptor": {"$ref": "#/definitions/StreamDescriptor"},
            "stream_state": {"type": ["object", "null"]},
        },
    },
    "AirbyteStateMessage": {
        "type": "object",
        "properties": {
            "type": {"enum": ["GLOBAL", "STREAM", "LEGACY", None]},
            "stream": {"$ref": "#/definitions/AirbyteStreamState"},
            "global": {
                "type": "object",
                "required": ["stream_states"],
                "properties": {
                    "shared_state": {"type": ["object", "null"]},
                    "stream_states": {
                        "type": "array",
                        "items": {"$ref": "#/definitions/AirbyteStreamState"},
                    },
                },
            },
            "data": {"type": ["object", "null"]},
            "sourceStats": {
                "type": ["object", "null"],
                "properties": {"recordCount": {"type": ["number", "null"]}},
            },
            "destinationStats": {
                "type": ["object", "null"],
                "properties": {"recordCount": {"type": ["number", "null"]}},
            },
        },
        "allOf": [
            {"if": {"properties": {"type": {"const": "STREAM"}}, "required": ["type"]},
             "then": {"required": ["stream"]}},
            {"if": {"properties": {"type": {"const": "GLOBAL"}}, "required": ["type"]},
             "then": {"required": ["global"]}},
            # LEGACY, or no type at all, means the state lives in `data`.
            {"if": {"not": {"required": ["type"]}}, "then": {"required": ["data"]}},
            {"if": {"properties": {"type": {"const": "LEGACY"}}, "required": ["type"]},
             "then": {"required": ["data"]}},
        ],
    },
    "AirbyteLogMessage": {
        "type": "object",
        "required": ["level", "message"],
        "properties": {
            "level": {"enum": ["FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"]},
            "message": {"type": "string"},
            "stack_trace": {"type": ["string", "null"]},
        },
    },
    "AirbyteTraceMessage": {
        "type": "object",
        "required": ["type", "emitted_at"],
        "properties": {
            "type": {"enum": ["ERROR", "ESTIMATE", "STREAM_STATUS", "ANALYTICS"]},
            "emitted_at": {"type": "number"},
            "error": {
                "type": ["object", "null"],
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "internal_message": {"type": ["string", "null"]},
                    "stack_trace": {"type": ["string", "null"]},
                    "failure_type": {
                        "enum": ["system_error", "config_error", "transient_error", None]
                    },
                },
            },
            "estimate": {
                "type": ["object", "null"],
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"enum": ["STREAM", "SYNC"]},
                    "row_estimate": {"type": ["integer", "null"]},
                    "byte_estimate": {"type": ["integer", "null"]},
                },
            },
            "stream_status": {
                "type": ["object", "null"],
                "required": ["stream_descriptor", "status"],
                "properties": {
                    "stream_descriptor": {"$ref": "#/definitions/StreamDescriptor"},
                    "status": {"enum": ["STARTED", "RUNNING", "COMPLETE", "INCOMPLETE"]},
                },
            },
        },
    },
    "AirbyteConnectionStatus": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["SUCCEEDED", "FAILED"]},
            "message": {"type": ["string", "null"]},
        },
    },
    "AirbyteStream": {
        "type": "object",
        "required": ["name", "json_schema", "supported_sync_modes"],
        "properties": {
            "name": {"type": "string"},
            "json_schema": _OPEN_OBJECT,
            "supported_sync_modes": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/definitions/SyncMode"},
            },
            "source_defined_cursor": {"type": ["boolean", "null"]},
            "default_cursor_field": {"type": ["array", "null"], "items": {"type": "string"}},
            "source_defined_primary_key": {
                "type": ["array", "null"],
                "items": _STRING_ARRAY,
            },
            "namespace": {"type": ["string", "null"]},
            "is_resumable": {"type": ["boolean", "null"]},
        },
    },
    "AirbyteCatalog": {
        "type": "object",
        "required": ["streams"],
        "properties": {
            "streams": {"type": "array", "items": {"$ref": "#/definitions/AirbyteStream"}}
        },
    },
    "ConfiguredAirbyteStream": {
        "type": "object",
        "required": ["stream", "sync_mode", "destination_sync_mode"],
        "properties": {
            "stream": {"$ref": "#/definitions/AirbyteStream"},
            "sync_mode": {"$ref": "#/definitions/SyncMode"},
            "cursor_field": {"type": ["array", "null"], "items": {"type": "string"}},
            "destination_sync_mode": {"$ref": "#/definitions/DestinationSyncMode"},
            "primary_key": {"type": ["array", "null"], "items": _STRING_ARRAY},
        },
    },
    "ConfiguredAirbyteCatalog": {
        "type": "object",
        "required": ["streams"],
        "properties": {
            "streams": {
                "type": "array",
                "items": {"$ref": "#/definitions/ConfiguredAirbyteStream"},
            }
        },
    },
    "ConnectorSpecification": {
        "type": "object",
        "required": ["connectionSpecification"],
        "properties": {
            "documentationUrl": {"type": ["string", "null"]},
            "changelogUrl": {"type": ["string", "null"]},
            "connectionSpecification": _OPEN_OBJECT,
            "supportsIncremental": {"type": ["boolean", "null"]},
            "supportsNormalization": {"type": ["boolean", "null"]},
            "supportsDBT": {"type": ["boolean", "null"]},
            "supported_destination_sync_modes": {
                "type": ["array", "null"],
                "items": {"$ref": "#/definitions/DestinationSyncMode"},
            },
            "protocol_version": {"type": ["string", "null"]},
        },
    },
    "AirbyteControlMessage": {
        "type": "object",
        "required": ["type", "emitted_at"],
        "properties": {
            "type": {"enum": ["CONNECTOR_CONFIG"]},
            "emitted_at": {"type": "number"},
            "connectorConfig": {
                "type": ["object", "null"],
                "required": ["config"],
                "properties": {"config": _OPEN_OBJECT},
            },
        },
    },
}

# Message type -> the envelope field that carries its payload and the payload's definition.
PAYLOADS: dict[str, tuple[str, str]] = {
    "RECORD": ("record", "AirbyteRecordMessage"),
    "STATE": ("state", "AirbyteStateMessage"),
    "LOG": ("log", "AirbyteLogMessage"),
    "SPEC": ("spec", "ConnectorSpecification"),
    "CONNECTION_STATUS": ("connectionStatus", "AirbyteConnectionStatus"),
    "CATALOG": ("catalog", "AirbyteCatalog"),
    "TRACE": ("trace", "AirbyteTraceMessage"),
    "CONTROL": ("control", "AirbyteControlMessage"),
}

AIRBYTE_MESSAGE_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "AirbyteMessage",
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": sorted(PAYLOADS)},
        **{field: {"$ref": f"#/definitions/{d}"} for field, d in PAYLOADS.values()},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": t}}, "required": ["type"]},
            "then": {"required": [field]},
        }
        for t, (field, _) in PAYLOADS.items()
    ],
    "definitions": DEFINITIONS,
}

CONFIGURED_CATALOG_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$ref": "#/definitions/ConfiguredAirbyteCatalog",
    "definitions": DEFINITIONS,
}

_MESSAGE_VALIDATOR = Draft7Validator(AIRBYTE_MESSAGE_SCHEMA)
_CATALOG_VALIDATOR = Draft7Validator(CONFIGURED_CATALOG_SCHEMA)


class ProtocolViolation(ValueError):
    """A line or document that is not a valid Airbyte protocol message."""


def _first_error(validator: Draft7Validator, doc: object) -> str | None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.path), list(e.path)))
    if not errors:
        return None
    # The deepest error names the actual field; `best_match` would often report the
    # `allOf` wrapper instead, which says nothing useful.
    err = max(errors, key=lambda e: len(e.absolute_path))
    where = "/".join(str(p) for p in err.absolute_path) or "<top>"
    return f"at {where}: {err.message}"


def parse_message(line: str) -> dict[str, Any]:
    """Decode one stdout line as an AirbyteMessage; raise ProtocolViolation saying why not."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolViolation(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise ProtocolViolation(f"JSON {type(doc).__name__}, not an AirbyteMessage object")
    # The envelope's type decides everything else, so a bad type is the error to report,
    # not whatever deeper field the payload also gets wrong.
    if doc.get("type") not in PAYLOADS:
        got = f"type {doc['type']!r}" if "type" in doc else "no 'type'"
        raise ProtocolViolation(f"not a valid AirbyteMessage ({PROTOCOL_SOURCE}): {got};"
                                f" expected one of {sorted(PAYLOADS)}")
    problem = _first_error(_MESSAGE_VALIDATOR, doc)
    if problem:
        raise ProtocolViolation(f"not a valid AirbyteMessage ({PROTOCOL_SOURCE}) {problem}")
    return doc


def validate_configured_catalog(catalog: Mapping[str, Any]) -> None:
    """Raise ProtocolViolation when a configured catalog does not follow the protocol."""
    problem = _first_error(_CATALOG_VALIDATOR, catalog)
    if problem:
        raise ProtocolViolation(f"not a valid ConfiguredAirbyteCatalog {problem}")


def schema_problems(json_schema: Mapping[str, Any]) -> list[str]:
    """Why a connector-provided JSON schema (spec or stream schema) is not a valid schema."""
    try:
        Draft7Validator.check_schema(json_schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<top>"
        return [f"at {where}: {exc.message}"]
    return []
