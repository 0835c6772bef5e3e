"""Columns shared by the checkers of one check_all: the same verdicts as each alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.checkers import check_all, order
from harness.checkers.columns import PayloadIds, columns_of, shared_columns
from harness.history import Op


def _json(result) -> str:
    return json.dumps(result.to_json(), sort_keys=True, default=str)


@pytest.mark.parametrize("inject", [0, 5])
def test_check_all_gives_each_checkers_own_verdict(bench, inject: int) -> None:
    ops = bench.generate(30_000, 3)
    if inject:
        bench.inject_anomalies(ops, inject, 3)
    names = [name for name, _ in bench.CHECKERS]
    report = check_all(ops, {"membership_bound_s": bench.MEMBERSHIP_BOUND_S,
                             "checkers": names})
    for name, check in bench.CHECKERS:
        assert _json(report.results[name]) == _json(check(ops)), name
    if inject:
        assert report.results["stream-set"].counts["lost"] == inject


def test_columns_are_taken_once_inside_and_afresh_outside() -> None:
    records = [{"payload_id": "p1", "record_id": [1, 1, 0], "consumer": "c"},
               {"payload_id": "p2", "record_id": [1, 2, 0]}]
    outside = columns_of(records)
    assert outside is not None and outside.pids == ["p1", "p2"]
    assert columns_of(records) is not outside
    with shared_columns():
        inside = columns_of(records)
        assert inside is not None and columns_of(records) is inside
        assert inside.pids is inside.pids and inside.consumers == ["c", None]
        assert inside.rids == [[1, 1, 0], [1, 2, 0]]
    assert columns_of([]) is None and columns_of([{"payload_id": 1}, "x"]) is None
    assert columns_of(({"payload_id": 1},)) is None  # not a list: the record-by-record path


def _fetch_history(second_consumer: dict[str, Any]) -> list[Op]:
    ops = [Op(0, "admin", "ok", "subscribe",
              {"subscription": "s", "stream": "st", "ack_timeout_s": 5.0}, 0)]
    for i, pid in enumerate(("a", "b")):
        v = {"stream": "st", "key": "k", "payload_id": pid}
        ops.append(Op(len(ops), "p1", "invoke", "append", v, 10 * i + 1))
        ops.append(Op(len(ops), "p1", "ok", "append", {**v, "record_id": [7, i + 1, 0]},
                      10 * i + 2))
    records = [{"payload_id": "a", "record_id": [7, 1, 0]},
               {"payload_id": "b", "record_id": [7, 2, 0], **second_consumer}]
    ops.append(Op(len(ops), "c1", "invoke", "fetch", {"subscription": "s"}, 30))
    ops.append(Op(len(ops), "c1", "ok", "fetch",
                  {"subscription": "s", "consumer": "c1", "records": records}, 31))
    return ops


@pytest.mark.parametrize("shared", [False, True])
def test_a_record_naming_no_consumer_is_the_ops_and_one_naming_none_is_nones(
    shared: bool,
) -> None:
    # The consumer column says None for both; the checkers must still tell them apart.
    def sequences(second_consumer: dict[str, Any]) -> int:
        ops = _fetch_history(second_consumer)
        if shared:
            return check_all(ops, {"checkers": ["order"]}).results["order"].counts[
                "reader_sequences"]
        return order.check(ops).counts["reader_sequences"]

    assert sequences({}) == 1  # both records the op's consumer's
    assert sequences({"consumer": "c1"}) == 1
    assert sequences({"consumer": None}) == 2  # a reader named None beside c1
    assert sequences({"consumer": "c2"}) == 2


def test_payload_ids_number_new_ones_in_the_order_first_met() -> None:
    registry = PayloadIds()
    assert registry.of(["a", "b"]) == [0, 1]
    # new ones among known ones, repeated, and None (a record without a payload id)
    assert registry.of(["c", "a", None, "c", "d", None]) == [2, 0, 3, 2, 4, 3]
    assert registry.pids == ["a", "b", "c", None, "d"]
    # an unhashable payload id, before or after the first unknown one: no ids
    assert registry.of([["x"], "e"]) is None
    assert registry.of(["e", ["x"]]) is None
