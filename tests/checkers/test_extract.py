"""The compiled column extractor (harness/checkers/_extract.c) gives what its Python twin
gives: the same append columns, the same read columns and rows, the same payload-id
registry afterwards, the same refusals, and so the same verdicts. The histories are the
benchmark's and the bent ones of test_fast_paths, plus bends aimed at the extractor's own
edges: payload ids that cannot key a dict, record ids of other shapes or beyond 64 bits,
missing fields, a value that is no dict."""

from __future__ import annotations

import shutil
import sysconfig
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.checkers import check_all, extract
from harness.checkers.columns import columns_of, payload_ids, shared_columns
from harness.checkers.table import HistoryTable, list_rows, table_of
from harness.history import Op, load_ops, write_ops
from tests.checkers.test_fast_paths import BENDS, _json

needs_compiled = pytest.mark.skipif(not extract.available(),
                                    reason="the compiled extractor is not built here "
                                    "(test_the_compiled_extractor_is_built says why)")


def _appends(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.f == "append"]


def _records(ops: list[Op]) -> list[dict[str, Any]]:
    return [r for op in ops if op.type == "ok" and isinstance(op.value, dict)
            for r in op.value.get("records") or ()]


def _unhashable_read_pid(ops: list[Op]) -> None:
    _records(ops)[40]["payload_id"] = ["not", "hashable"]


def _unhashable_append_pid(ops: list[Op]) -> None:
    _appends(ops)[7].value["payload_id"] = {"a": 1}


def _missing_fields(ops: list[Op]) -> None:
    records = _records(ops)
    del records[10]["record_id"]
    del records[20]["payload_id"]
    ok = [op for op in _appends(ops) if op.type == "ok"][3]
    del ok.value["record_id"]


def _huge_record_ids(ops: list[Op]) -> None:
    _records(ops)[30]["record_id"] = [2**70, 1, 1]
    [op for op in _appends(ops) if op.type == "ok"][9].value["record_id"] = [1, 2**64, 0]


def _odd_record_ids(ops: list[Op]) -> None:
    records = _records(ops)
    records[5]["record_id"] = [True, 1, 2]
    records[6]["record_id"] = (1, 2, 3)
    records[7]["record_id"] = [np.int64(4), 5, 6]
    records[8]["record_id"] = "1-2-3"


def _value_no_dict(ops: list[Op]) -> None:
    _appends(ops)[11].value = ["payload"]


def _missing_append_pid(ops: list[Op]) -> None:
    del _appends(ops)[13].value["payload_id"]


def _unhashable_process(ops: list[Op]) -> None:
    _appends(ops)[17].process = ["p"]  # type: ignore[assignment]


def _huge_time(ops: list[Op]) -> None:
    _appends(ops)[19].time = 2**64


def _odd_types(ops: list[Op]) -> None:
    apps = _appends(ops)
    apps[21].type = "timeout"
    apps[22].type = ["ok"]  # type: ignore[assignment]


def _odd_keys(ops: list[Op]) -> None:
    invoked = [op for op in _appends(ops) if op.type == "invoke"]
    del invoked[3].value["key"]
    invoked[5].value["key"] = 7
    invoked[6].value["key"] = None


def _unhashable_key(ops: list[Op]) -> None:
    [op for op in _appends(ops) if op.type == "invoke"][4].value["key"] = ["k"]


OWN_BENDS: dict[str, Callable[[list[Op]], None]] = {
    "odd_keys": _odd_keys,
    "unhashable_key": _unhashable_key,
    "unhashable_read_pid": _unhashable_read_pid,
    "unhashable_append_pid": _unhashable_append_pid,
    "missing_fields": _missing_fields,
    "huge_record_ids": _huge_record_ids,
    "odd_record_ids": _odd_record_ids,
    "value_no_dict": _value_no_dict,
    "missing_append_pid": _missing_append_pid,
    "unhashable_process": _unhashable_process,
    "huge_time": _huge_time,
    "odd_types": _odd_types,
}
ALL_BENDS = {**BENDS, **OWN_BENDS}


def _snapshot(ops: list[Op]) -> dict[str, Any]:
    """Everything the table's extraction gives, as plain values."""
    with shared_columns():
        table = table_of(ops)
        assert table is not None
        appends = table.appends
        out: dict[str, Any] = {"appends": None}
        if appends is not None:
            out["appends"] = {
                "types": appends.types.tolist(), "pids": appends.pids.tolist(),
                "processes": appends.processes.tolist(),
                "process_names": list(appends.process_names),
                "times": appends.times.tolist(), "indexes": appends.indexes.tolist(),
                "rids": appends.rids,
                "rid_array": None if appends.rid_array is None else appends.rid_array.tolist(),
                "invoke_keys": appends.invoke_keys,
            }
        reads = table.reads
        if reads is not None:
            out["reads"] = {
                "positions": reads.positions, "starts": reads.starts.tolist(),
                "ids": None if reads.ids is None else reads.ids.tolist(),
                "rows": None if reads.rows is None else reads.rows.tolist(),
                "columns": [(c.pids, c.rids, c.ids(appends.registry))  # type: ignore[union-attr]
                            for c in reads.columns],
            }
            registry = appends.registry  # type: ignore[union-attr]
            out["registry"] = (list(registry.index.items()), registry.pids)
        return out


def _compare(bench: Any, ops: list[Op]) -> None:
    compiled = _snapshot(ops)
    with extract.python_twin():
        twin = _snapshot(ops)
    assert compiled == twin
    names = [name for name, _ in bench.CHECKERS]
    options = {"membership_bound_s": bench.MEMBERSHIP_BOUND_S, "checkers": names}
    fast, slow = _judged(ops, options), None
    with extract.python_twin():
        slow = _judged(ops, options)
    if isinstance(fast, Exception) or isinstance(slow, Exception):
        # (a history the op-by-op paths cannot judge either: the same refusal both ways)
        assert type(fast) is type(slow), (fast, slow)
        return
    for name in names:
        assert _json(fast.results[name]) == _json(slow.results[name]), name


def _judged(ops: list[Op], options: dict[str, Any]) -> Any:
    try:
        return check_all(ops, options)
    except (TypeError, ValueError) as error:
        return error


@needs_compiled
@pytest.mark.parametrize("seed,inject", [(1, 0), (3, 4)])
def test_benchmark_histories_extracted_the_same_both_ways(bench: Any, seed: int,
                                                          inject: int) -> None:
    ops = bench.generate(6_000, seed)
    if inject:
        bench.inject_anomalies(ops, inject, seed)
    _compare(bench, ops)


@needs_compiled
@pytest.mark.parametrize("bend", ["none", "equal_not_exact"])
def test_histories_read_back_from_a_file_extracted_the_same_both_ways(
    bench: Any, tmp_path: Path, bend: str,
) -> None:
    # Read back from a file, a record id read is no longer its append's own list, only an
    # equal one: the compiled pass converts it instead of taking the acknowledged row, and
    # one equal but not of exact ints ([True, ...] for [1, ...]) takes that row.
    path = tmp_path / "history.jsonl"
    write_ops(bench.generate(6_000, 2), path)
    ops = load_ops(path)
    if bend == "equal_not_exact":
        bent = 0
        for record in _records(ops):
            rid = record["record_id"]
            if 1 in rid[1:]:
                record["record_id"] = [rid[0], *(True if x == 1 else x for x in rid[1:])]
                bent += 1
        assert bent > 10
    assert _snapshot(ops)["reads"]["rows"] is not None
    _compare(bench, ops)


@needs_compiled
@pytest.mark.parametrize("bend", sorted(ALL_BENDS))
def test_bent_histories_extracted_the_same_both_ways(bench: Any, bend: str) -> None:
    ops = bench.generate(4_000, 7)
    ALL_BENDS[bend](ops)
    _compare(bench, ops)


@needs_compiled
@pytest.mark.parametrize("bend", ["value_no_dict", "missing_append_pid", "unhashable_process",
                                  "unhashable_append_pid", "huge_time"])
def test_what_the_extractor_refuses_leaves_no_append_columns(bench: Any, bend: str) -> None:
    # the checkers then judge the appends op by op, which names what is wrong
    ops = bench.generate(600, 3)
    OWN_BENDS[bend](ops)
    assert HistoryTable(ops).appends is None


@needs_compiled
def test_an_unhashable_read_payload_id_numbers_none_of_that_reads_new_ones(bench: Any) -> None:
    ops = bench.generate(600, 3)
    read = next(op for op in ops if op.f == "read" and op.type == "ok"
                and len(op.value["records"]) > 3)
    records = read.value["records"]
    records[0]["payload_id"] = "never-appended"
    records[2]["payload_id"] = ["unhashable"]
    for twin in (False, True):
        with shared_columns():
            registry_size = None
            table = table_of(ops)
            assert table is not None and table.appends is not None
            registry_size = len(table.appends.registry.pids)
            if twin:
                with extract.python_twin():
                    assert table.reads is not None and table.reads.ids is None
            else:
                assert table.reads is not None and table.reads.ids is None
            assert "never-appended" not in table.appends.registry.index
            assert len(table.appends.registry.pids) == registry_size


@pytest.mark.parametrize("at", [0, 3, 40])
def test_a_record_that_is_no_dict_gives_no_columns_and_numbers_nothing(at: int) -> None:
    # The compiled pass looks records up a few places ahead of the one it numbers: a record
    # that is no dict anywhere must still leave the registry as it was.
    records: list[Any] = [{"payload_id": f"p{i}", "record_id": [1, i, 0], "consumer": "c"}
                          for i in range(60)]
    records[at] = ["no", "dict"]
    for twin in (False, True):
        with shared_columns(), (extract.python_twin() if twin else nullcontext()):
            registry = payload_ids()
            registry.of(["p5"])  # known before: keeps its number
            assert columns_of(records) is None
            assert registry.pids == ["p5"] and registry.index == {"p5": 0}


class _Named(str):
    """A payload id of a str subclass: equal to its plain twin, hashed its own way."""

    def __hash__(self) -> int:
        return str.__hash__(self)


@needs_compiled
@pytest.mark.parametrize("known", [0, 100, 70_000])
def test_payload_ids_numbered_while_the_registry_grows_are_the_python_twins(known: int) -> None:
    # The compiled pass asks for each look-up's slot, entry and objects a few records
    # ahead, reading the dict's own table: a read that adds ids (resizing that table under
    # it), keys of every kind (str, None, int, tuple, a str subclass) and equal strings that
    # are other objects must still be numbered exactly as the Python twin numbers them.
    # 70,000 known ids take the table past 2^16 slots (4-byte indices).
    pids: list[Any] = []
    for i in range(3_000):
        pids += [f"known-{(i * 7919) % max(known, 1)}", f"new-{i}",
                 "".join(["new-", str(i // 2)]), None, i % 50, ("t", i % 9), _Named(f"s{i}")]
    records = [{"payload_id": pid, "record_id": [1, k, 0]} for k, pid in enumerate(pids)]
    numbered = []
    for twin in (False, True):
        with shared_columns(), (extract.python_twin() if twin else nullcontext()):
            registry = payload_ids()
            registry.of([f"known-{i}" for i in range(known)])
            columns = columns_of(records)
            assert columns is not None
            numbered.append((columns.ids(registry), list(registry.pids), dict(registry.index)))
    assert numbered[0] == numbered[1]
    assert numbered[0][0] is not None and len(numbered[0][0]) == len(records)


class _ShiftedTime(Op):
    """An op whose class answers `time` its own way: the compiled extractor reads an Op's
    slots directly, and must ask any other class by getattr."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        got = super().__getattribute__(name)
        return got + 1 if name == "time" else got


@pytest.mark.parametrize("which", ["all", "first", "rest"])
def test_append_columns_ask_ops_of_other_classes_by_getattr(bench: Any, which: str) -> None:
    ops = bench.generate(300, 2)
    appends = [op for op in ops if op.f == "append"]
    bent = set(map(id, {"all": appends, "first": appends[:1], "rest": appends[1:]}[which]))
    ops = [_ShiftedTime(op.index, op.process, op.type, op.f, op.value, op.time)
           if id(op) in bent else op for op in ops]
    for twin in (False, True):
        with shared_columns(), (extract.python_twin() if twin else nullcontext()):
            table = table_of(ops)
            assert table is not None and table.appends is not None
            assert table.appends.times.tolist() == [
                op.time for op in ops if op.f == "append"]


def test_the_compiled_extractor_is_built() -> None:
    """Where a C compiler and Python's headers are, the install builds the extractor (it is
    optional only for machines without them)."""
    headers = sysconfig.get_paths()["include"]
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the checkers use the Python twin (apt-get install gcc)")
    assert extract.available(), (
        "harness/checkers/_extract.c was not built though a C compiler is here; reinstall the "
        f"project (pip install -e .) and read the build's output (Python headers: {headers})")


@pytest.mark.parametrize("raws", [
    [[1, 2, 3]] * 40,
    [[1, 2, 3]] * 30 + [[True, 2, 3]],  # an int subclass: array("q") takes it
    [[1, 2, 3], [np.int64(4), 5, 6]],  # numpy's int: so does array("q")
    [[1, 2, 3], [1, 2, 2**63]],  # no int64
    [[1, 2, 3], [1, 2, -(2**63)]],
    [[1, 2, 3], [1.0, 2, 3]],
    [[1, 2, 3], (1, 2, 3)],
    [[1, 2, 3], [1, 2]],
    [[1, 2, 3], None],
    [[1, 2, 3], "123"],
])
def test_int_rows_and_the_python_list_rows_agree(raws: list[Any]) -> None:
    got = list_rows(raws)
    with extract.python_twin():
        want = list_rows(raws)
    assert (got is None) == (want is None), (got, want)
    if got is not None and want is not None:
        assert got.tolist() == want.tolist()


def test_the_positions_of_each_f_are_the_python_loops(bench: Any) -> None:
    ops = bench.generate(400, 5)
    ops[7] = _ShiftedTime(7, "p", "ok", "read", {}, 1)  # another class: asked by getattr
    ops[9].f = "".join(["re", "ad"])  # an equal f that is another object
    compiled_by_f = HistoryTable(ops).by_f
    with extract.python_twin():
        twin_by_f = HistoryTable(ops).by_f
    assert compiled_by_f == twin_by_f and list(compiled_by_f) == list(twin_by_f)
    ops[11].f = ["unhashable"]  # type: ignore[assignment]
    for twin in (False, True):
        with extract.python_twin() if twin else nullcontext(), pytest.raises(TypeError):
            HistoryTable(ops)
