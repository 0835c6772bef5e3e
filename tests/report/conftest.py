"""Hand-made allure result files for the report's tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def write_result(
    directory: Path,
    name: str,
    status: str,
    *,
    check: str | None = None,
    target: str = "reference",
    client: str | None = None,
    defects: str | None = None,
    message: str = "",
    stop: int = 2000,
    attachments: list[dict] | None = None,
    suite: str = "api",
    fault: str | None = None,
) -> None:
    labels = [{"name": "target", "value": target}, {"name": "suite_area", "value": suite}]
    if fault:
        labels.append({"name": "fault", "value": fault})
    if check:
        labels.append({"name": "conformance_id", "value": check})
    if client:
        labels.append({"name": "client", "value": client})
    if defects:
        labels.append({"name": "defects", "value": defects})
    data = {
        "uuid": str(uuid.uuid4()),
        "name": name,
        "fullName": f"suites.{suite}.test_x#{name}",
        "status": status,
        "statusDetails": {"message": message, "trace": "Traceback ..."},
        "labels": labels,
        "attachments": attachments or [],
        "start": stop - 1000,
        "stop": stop,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{data['uuid']}-result.json").write_text(json.dumps(data))


@pytest.fixture
def result() -> Callable[..., None]:
    """`result(dir, name, status, check=..., client=..., message=..., attachments=...)`."""
    return write_result


# Hand-made histories of the two kinds the plots draw, 1 s = 10**9 ns from T0.
T0 = 10**12
S = 10**9


def nemesis_ops(name: str, start_s: float, stop_s: float, node: int = 2) -> list[dict]:
    fault = {"kind": "kill", "target": "one"}
    return [
        {"process": "nemesis", "type": "ok", "f": name, "time": T0 + int(start_s * S),
         "value": {"action": "start", "fault": fault, "nodes": [node], "down": [node], "up": []}},
        {"process": "nemesis", "type": "ok", "f": name, "time": T0 + int(stop_s * S),
         "value": {"action": "stop", "fault": fault, "nodes": [node], "down": [], "up": [node]}},
    ]


@pytest.fixture
def membership_ops() -> list[dict]:
    """3 nodes sampled every 0.5 s for 8 s; node 2 killed at 2 s, suspected, dead, back at
    5 s."""
    ops: list[dict] = []
    for i in range(17):
        t = i * 0.5
        state = "alive" if t < 2.5 or t >= 5.5 else ("suspect" if t < 3.5 else "dead")
        for observer in ("1", "3"):
            ops.append({"process": "probe", "type": "ok", "f": "view", "time": T0 + int(t * S),
                        "value": {"observer": observer,
                                  "view": {"1": "alive", "2": state, "3": "alive"}}})
    ops += nemesis_ops("kill-one", 2.0, 5.0)
    ops.sort(key=lambda op: op["time"])
    return [{"index": i, **op} for i, op in enumerate(ops)]


@pytest.fixture
def membership_checker() -> dict:
    """The membership checker's JSON for `membership_ops` (bound 3.7 s)."""
    return {
        "checker": "membership", "valid": True, "counts": {}, "anomalies": {}, "notes": [],
        "figures": {
            "bound_s": 3.7,
            "episodes": [
                {"node": "2", "event": "down", "fault": "kill-one", "at_s": 2.0,
                 "first_suspicion_s": 0.5, "confirmed_dead_s": 1.5},
                {"node": "2", "event": "up", "fault": "kill-one", "at_s": 5.0},
            ],
            "epochs": [
                {"start_s": 0.0, "after": "start", "agreement_s": 0.0},
                {"start_s": 2.0, "after": "kill-one", "agreement_s": 1.5},
                {"start_s": 5.0, "after": "kill-one", "agreement_s": 0.5},
            ],
        },
    }


@pytest.fixture
def durability_ops() -> list[dict]:
    """One producer appending every 0.1 s for 10 s (10 ms each, 900 ms while node 2 is down
    from 3 s to 6 s, two of those indeterminate), a subscription that delivered everything
    once and p-40 (acked in the fault) twice, at 11 s, and a final read of the stream."""
    ops: list[dict] = []
    for i in range(100):
        t = i * 0.1
        during = 3.0 <= t < 6.0
        value = {"stream": "s", "key": "k", "payload_id": f"p-{i}"}
        ops.append({"process": "producer", "type": "invoke", "f": "append",
                    "time": T0 + int(t * S), "value": value})
        kind = "info" if i in (35, 36) else "ok"
        ops.append({"process": "producer", "type": kind, "f": "append",
                    "time": T0 + int(t * S) + (900 if during else 10) * 10**6, "value": value})
    acked = [f"p-{i}" for i in range(100) if i not in (35, 36)]
    delivered = acked + ["p-40"]
    ops.append({"process": "consumer", "type": "ok", "f": "fetch", "time": T0 + 11 * S,
                "value": {"subscription": "sub", "consumer": "c1",
                          "records": [{"payload_id": p} for p in delivered]}})
    ops.append({"process": "drain", "type": "ok", "f": "read", "time": T0 + 12 * S,
                "value": {"stream": "s", "final": True, "complete": True,
                          "records": [{"payload_id": p} for p in acked]}})
    ops += nemesis_ops("kill-one", 3.0, 6.0)
    ops.sort(key=lambda op: op["time"])
    return [{"index": i, **op} for i, op in enumerate(ops)]


@pytest.fixture
def stream_set_checker() -> dict:
    """The stream-set checker's JSON for a history like `durability_ops` in which two
    acknowledged appends were lost: one acked in the fault (4.2 s), one before it (1 s)."""
    return {
        "checker": "stream-set", "valid": False, "notes": [], "figures": {},
        "counts": {"lost": 2, "duplicated": 99},
        "anomalies": {"lost": [{"payload_id": "p-42", "acked_at_ms": 4200.0},
                               {"payload_id": "p-10", "acked_at_ms": 1010.0}],
                      "duplicated": []},
    }


def write_history(directory: Path, ops: list[dict], name: str) -> dict:
    """Write ops as an allure attachment; returns its attachment entry."""
    source = f"{name}-attachment.jsonl"
    (directory / source).write_text("\n".join(json.dumps(op) for op in ops))
    return {"name": "history", "source": source, "type": "text/plain"}


def write_checker(directory: Path, data: dict, name: str) -> dict:
    source = f"{name}-attachment.json"
    (directory / source).write_text(json.dumps(data))
    return {"name": f"checker:{data['checker']}", "source": source, "type": "application/json"}


@pytest.fixture
def chaos_results(tmp_path, membership_ops, membership_checker, durability_ops,
                  stream_set_checker) -> Path:
    """An allure results folder holding a membership test and a durability test, each with
    its history and checker result, as the chaos suites leave them."""
    d = tmp_path / "allure-results"
    d.mkdir(exist_ok=True)
    write_result(
        d, "test_failure_detected_within_bound[n3-kill-one]", "passed", suite="membership",
        fault="fault=kill-one",
        attachments=[write_checker(d, membership_checker, "m1"),
                     write_history(d, membership_ops, "m2")],
    )
    write_result(
        d, "test_no_acknowledged_record_lost[kill-one]", "failed", suite="durability",
        fault="fault=kill-one", message="stream-set: valid=False (lost=2)",
        attachments=[write_checker(d, stream_set_checker, "d1"),
                     write_history(d, durability_ops, "d2")],
    )
    return d
