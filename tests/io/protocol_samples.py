"""Airbyte message samples shared by the schema tests and the fidelity check against the
official models: VALID ones every reader must accept, INVALID ones with the reason given."""

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
