"""Hand-made histories for the checker tests: ops with explicit times, in seconds."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.checkers import membership, order, queue, reach, stream_set, subscription
from harness.checkers.columns import shared_columns
from harness.history import Op

# The tests of hand-made histories: each runs twice (see checker_path).
_BOTH_WAYS = {
    "test_check_all_and_cli", "test_membership_checker", "test_order_checker",
    "test_queue_checker", "test_reach_checker", "test_stream_set_checker",
    "test_subscription_checker",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rpartition(".")[2] in _BOTH_WAYS:
        metafunc.parametrize("checker_path", ["alone", "shared"], indirect=True)


@pytest.fixture(autouse=True)
def checker_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test of hand-made histories runs twice: each checker as called, and each inside
    `shared_columns()`, where the checkers take the shared table's fast paths (what
    `check_all` does); the histories must be judged the same both ways."""
    path = getattr(request, "param", "alone")
    if path == "shared":
        for module in (membership, order, queue, reach, stream_set, subscription):

            def shared(*args: Any, _check: Any = module.check, **kwargs: Any) -> Any:
                with shared_columns():
                    return _check(*args, **kwargs)

            monkeypatch.setattr(module, "check", shared)
    return str(path)


class HistoryBuilder:
    """Appends ops in call order; `at` (seconds) sets the time of the next ops."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.now = 0.0

    def at(self, seconds: float) -> HistoryBuilder:
        self.now = seconds
        return self

    def op(self, process: Any, type: str, f: str, value: Any = None, **kw: Any) -> Op:
        op = Op(
            index=len(self.ops),
            process=process,
            type=type,
            f=f,
            value=value,
            time=int(self.now * 1e9),
            **kw,
        )
        self.ops.append(op)
        return op

    # -- client ops
    def append(
        self,
        pid: Any,
        *,
        result: str = "ok",
        process: Any = "p1",
        key: str = "k",
        stream: str = "s",
        rid: tuple[int, int, int] | None = None,
        done_at: float | None = None,
    ) -> None:
        value = {"stream": stream, "key": key, "payload_id": pid, "shard": rid[0] if rid else 1}
        self.op(process, "invoke", "append", value)
        if done_at is not None:
            self.now = done_at
        done = dict(value)
        if result == "ok" and rid is not None:
            done["record_id"] = list(rid)
        self.op(process, result, "append", done, error=None if result == "ok" else "boom")

    def read(
        self,
        records: list[tuple[Any, tuple[int, int, int] | None]],
        *,
        process: Any = "r1",
        f: str = "read",
        done_at: float | None = None,
        **value: Any,
    ) -> None:
        self.op(process, "invoke", f, None)
        if done_at is not None:
            self.now = done_at
        recs = []
        for pid, rid in records:
            rec: dict[str, Any] = {"payload_id": pid}
            if rid is not None:
                rec["record_id"] = list(rid)
            recs.append(rec)
        self.op(process, "ok", f, {"records": recs, **value})

    def fetch(
        self,
        records: list[tuple[Any, tuple[int, int, int]]],
        consumer: str,
        sub: str = "sub",
        **value: Any,
    ) -> None:
        recs = [{"payload_id": p, "record_id": list(r), "consumer": consumer} for p, r in records]
        v = {"subscription": sub, "consumer": consumer, "records": recs, **value}
        self.op(consumer, "invoke", "fetch", {"subscription": sub, "consumer": consumer})
        self.op(consumer, "ok", "fetch", v)

    def ack(
        self, rids: list[tuple[int, int, int]], consumer: str, sub: str = "sub", result: str = "ok"
    ) -> None:
        v = {"subscription": sub, "consumer": consumer, "record_ids": [list(r) for r in rids]}
        self.op(f"ack-{consumer}", "invoke", "ack", v)
        self.op(f"ack-{consumer}", result, "ack", v)

    def view(self, observer: Any, view: dict[Any, str]) -> None:
        v = {"observer": observer, "view": view}
        self.op(f"probe-{observer}", "invoke", "view", {"observer": observer})
        self.op(f"probe-{observer}", "ok", "view", v)

    def nemesis(self, f: str, down: Sequence[int] = (), up: Sequence[int] = ()) -> None:
        self.op("nemesis", "invoke", f, {"action": "start"})
        self.op("nemesis", "ok", f, {"action": "start", "down": list(down), "up": list(up)})


@pytest.fixture
def hb() -> HistoryBuilder:
    return HistoryBuilder()


BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "checker_bench.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    """benchmarks/checker_bench.py as a module: its history generator for the tests that
    compare the checkers' paths on a realistic history."""
    spec = importlib.util.spec_from_file_location("checker_bench_for_tests", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
