#!/usr/bin/env python3
"""A tiny Airbyte connector (stdlib only) whose misbehaviour is chosen by FAKE_CONNECTOR_MODE.

It is a real executable speaking the protocol over stdout/stdin, so the runner and the
acceptance checks are exercised against real processes. Modes:
  good             a correct source (one stream `items`) and destination (echoes states)
  garbage          prints a non-JSON line in the middle of a read
  invalid-message  emits a RECORD without `emitted_at`
  crash            emits a few records, an ERROR trace, then exits 3
  hang             emits one message then sleeps (pid written to $FAKE_CONNECTOR_PIDFILE)
  check-crashes    `check` with a bad config raises instead of reporting FAILED
  schema-violation records whose `id` is a string although the schema says integer
  ignores-state    incremental reads start from scratch whatever the state says
  nondeterministic record values differ between runs
  state-backwards  the second STATE moves the cursor back
  drops-last-state a destination that never echoes the final STATE
  extra-state      a destination that echoes a STATE it was never sent
"""

import json
import os
import random
import sys
import time

MODE = os.environ.get("FAKE_CONNECTOR_MODE", "good")
STREAM = {
    "name": "items",
    "json_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"id": {"type": "integer"}, "updated_at": {"type": "integer"},
                       "value": {"type": "string"}},
    },
    "supported_sync_modes": ["full_refresh", "incremental"],
    "source_defined_cursor": True,
    "default_cursor_field": ["updated_at"],
    "source_defined_primary_key": [["id"]],
}
SPEC = {
    "connectionSpecification": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 0}},
    },
    "supported_destination_sync_modes": ["append", "append_dedup"],
}


def emit(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def arg(name):
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else None


def load(name):
    path = arg(name)
    if path is None:
        return None
    with open(path) as fh:
        return json.load(fh)


def record(i):
    value = f"v{random.random()}" if MODE == "nondeterministic" else f"v{i}"
    rid = str(i) if MODE == "schema-violation" else i
    return {"type": "RECORD", "record": {"stream": "items", "emitted_at": 1_700_000_000_000,
                                         "data": {"id": rid, "updated_at": i, "value": value}}}


def state(cursor):
    return {"type": "STATE", "state": {"type": "STREAM", "stream": {
        "stream_descriptor": {"name": "items"}, "stream_state": {"updated_at": cursor}}}}


def read(config, states):
    count = config["count"]
    start = 0
    if states and MODE != "ignores-state":
        start = states[-1]["stream"]["stream_state"]["updated_at"]
    emitted = 0
    for i in range(start + 1, count + 1):
        if MODE == "garbage" and emitted == 2:
            print("hello from a print() left in the connector")
        if MODE == "invalid-message" and emitted == 1:
            emit({"type": "RECORD", "record": {"stream": "items", "data": {"id": i}}})
        if MODE == "crash" and emitted == 3:
            emit({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 0, "error": {
                "message": "the upstream API went away", "failure_type": "system_error"}}})
            sys.stderr.write("Traceback (most recent call last):\n  RuntimeError: boom\n")
            sys.exit(3)
        if MODE == "hang" and emitted == 1:
            # Written aside and renamed: a test polls for the file and reads it at once, so it
            # must never see the file before the pid is in it.
            pidfile = os.environ["FAKE_CONNECTOR_PIDFILE"]
            with open(pidfile + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(pidfile + ".tmp", pidfile)
            time.sleep(3600)
        emit(record(i))
        emitted += 1
        if i % 5 == 0:
            cursor = i - 7 if MODE == "state-backwards" and i == 10 else i
            emit(state(cursor))
    emit(state(count))


def write():
    sent = []
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] == "STATE":
            sent.append(msg)
            if MODE == "extra-state" and len(sent) == 1:
                emit(state(999))
            emit(msg)


def write_dropping_last():
    pending = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] == "STATE":
            if pending is not None:
                emit(pending)
            pending = msg


def main():
    cmd = sys.argv[1]
    emit({"type": "LOG", "log": {"level": "INFO", "message": f"fake connector {cmd} ({MODE})"}})
    if cmd == "spec":
        emit({"type": "SPEC", "spec": SPEC})
    elif cmd == "check":
        config = load("--config")
        if not isinstance(config.get("count"), int):
            if MODE == "check-crashes":
                raise KeyError("count")
            emit({"type": "CONNECTION_STATUS", "connectionStatus": {
                "status": "FAILED", "message": "count must be an integer"}})
        else:
            emit({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}})
    elif cmd == "discover":
        emit({"type": "CATALOG", "catalog": {"streams": [STREAM]}})
    elif cmd == "read":
        read(load("--config"), load("--state"))
    elif cmd == "write":
        write_dropping_last() if MODE == "drops-last-state" else write()
    else:
        sys.stderr.write(f"unknown command {cmd}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
