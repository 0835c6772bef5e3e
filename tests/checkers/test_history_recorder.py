"""History recording: JSON lines on disk, thread/asyncio safety, error classification."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent import futures

import grpc
import pytest

from harness.history import (
    DefiniteFailure,
    History,
    HistoryFormatError,
    Op,
    as_ops,
    classify_error,
    hstream_error_code,
    load_ops,
    pair_completions,
    shared_ops,
)


def test_ops_are_written_as_they_happen(tmp_path):
    path = tmp_path / "h" / "run.jsonl"
    h = History(path)
    inv = h.invoke(1, "append", {"stream": "s", "key": "k", "payload_id": "a", "shard": 1})
    assert json.loads(path.read_text().splitlines()[0])["type"] == "invoke"
    h.ok(inv, {**inv.value, "record_id": [1, 1, 0]})
    h.close()
    ops = load_ops(path)
    assert [(o.index, o.type, o.f) for o in ops] == [(0, "invoke", "append"), (1, "ok", "append")]
    assert ops[1].value["record_id"] == [1, 1, 0]
    assert ops[1].time >= ops[0].time


def test_round_trip_keeps_every_field():
    op = Op(3, "nemesis", "info", "kill-one", {"nodes": [1]}, 12, "node-1", "UNAVAILABLE", {"x": 1})
    assert Op.from_dict(json.loads(op.to_json())) == op


def test_concurrent_threads_get_unique_sequential_indices(tmp_path):
    path = tmp_path / "t.jsonl"
    h = History(path)

    def worker(p: int) -> None:
        for i in range(200):
            inv = h.invoke(p, "append", {"payload_id": f"{p}-{i}"})
            h.ok(inv)

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    ops = load_ops(path)
    assert len(ops) == 8 * 200 * 2
    assert [o.index for o in ops] == list(range(len(ops)))
    assert len(pair_completions(ops)) == 8 * 200


def test_asyncio_operations_record_outcomes():
    h = History()

    async def ok_op(i: int) -> None:
        async with h.operation(i, "read") as op:
            await asyncio.sleep(0)
            op.ok({"records": [], "final": False})

    async def timeout_op() -> None:
        async with h.operation("t", "append", {"payload_id": "x"}):
            await asyncio.wait_for(asyncio.sleep(1), 0.001)

    async def main() -> None:
        await asyncio.gather(*(ok_op(i) for i in range(5)), timeout_op())

    asyncio.run(main())
    completions = [o for o in h.ops if o.type != "invoke"]
    assert sorted(o.type for o in completions) == ["info"] + ["ok"] * 5
    info = next(o for o in completions if o.type == "info")
    assert info.error.startswith("timeout") and info.value == {"payload_id": "x"}


def test_operation_without_explicit_completion_is_ok_and_cancellation_propagates():
    h = History()
    with h.operation(1, "ack", {"record_ids": []}):
        pass
    assert h.ops[-1].type == "ok"
    with pytest.raises(KeyboardInterrupt):
        with h.operation(1, "ack"):
            raise KeyboardInterrupt
    assert h.ops[-1].type == "info"


def test_torn_last_line_is_skipped_and_bad_lines_are_named(tmp_path):
    good = Op(0, 1, "invoke", "read").to_json()
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good + "\n" + good[:10])
    assert len(load_ops(torn)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\nnot json\n" + good + "\n")
    with pytest.raises(HistoryFormatError, match=r"bad.jsonl:2: not a history op"):
        load_ops(bad)
    with pytest.raises(HistoryFormatError, match="does not exist"):
        load_ops(tmp_path / "missing.jsonl")
    wrong_type = tmp_path / "wrong.jsonl"
    wrong_type.write_text(json.dumps({**json.loads(good), "type": "done"}) + "\n")
    with pytest.raises(HistoryFormatError, match="op type 'done'"):
        load_ops(wrong_type)


def test_as_ops_accepts_dicts_paths_and_histories(tmp_path):
    h = History(tmp_path / "a.jsonl")
    h.invoke(1, "read")
    h.close()
    assert len(as_ops(h)) == len(as_ops(tmp_path / "a.jsonl")) == 1
    assert as_ops([h.ops[0].to_dict()])[0] == h.ops[0]


def test_as_ops_gives_the_shared_list_itself_only_inside_shared_ops():
    ops = [Op(0, "p", "invoke", "read"), Op(1, "p", "ok", "read")]
    assert as_ops(ops) == ops and as_ops(ops) is not ops  # a copy
    with shared_ops(ops):
        assert as_ops(ops) is ops  # check_all's list, checked once
        other = list(ops)
        assert as_ops(other) is not other  # any other list is still copied
    assert as_ops(ops) is not ops


def test_pairing_matches_batched_appends_by_payload_id():
    ops = [
        Op(0, "p", "invoke", "append", {"payload_id": "a"}),
        Op(1, "p", "invoke", "append", {"payload_id": "b"}),
        Op(2, "p", "ok", "append", {"payload_id": "b"}),
        Op(3, "p", "info", "append", {"payload_id": "a"}),
        Op(4, "q", "invoke", "read"),
        Op(5, "q", "ok", "read"),
        Op(6, "z", "ok", "read"),  # no invocation: left out
    ]
    pairs = pair_completions(ops)
    assert {k: v.index for k, v in pairs.items()} == {2: 1, 3: 0, 5: 4}


# -- classification with real gRPC errors from a real server on loopback ---------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Rejecting(grpc.GenericRpcHandler):
    """Answers /t.T/<STATUS>_<code> (or SLOW) with that status and an HStreamDB JSON message."""

    def service(self, details):  # type: ignore[no-untyped-def]
        name = details.method.rsplit("/", 1)[-1]
        status, _, code = name.rpartition("_") if "_" in name else (name, "", "")

        def handler(request, context):  # type: ignore[no-untyped-def]
            if status == "SLOW":
                threading.Event().wait(2)
                return b""
            context.abort(getattr(grpc.StatusCode, status), json.dumps(
                {"error": int(code or 0), "message": name, "extra": None}))

        return grpc.unary_unary_rpc_method_handler(handler)


@pytest.fixture(scope="module")
def rejecting_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_Rejecting(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _sync_error(target: str, method: str, timeout: float = 5) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/t.T/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=timeout)
        return info.value


@pytest.mark.parametrize(
    "method,expected",
    [
        ("INVALID_ARGUMENT_206", "fail"),
        ("NOT_FOUND_200", "fail"),
        ("ALREADY_EXISTS_201", "fail"),
        ("UNAUTHENTICATED_0", "fail"),
        ("FAILED_PRECONDITION_800", "fail"),  # WrongServer: refused before anything was done
        ("FAILED_PRECONDITION_0", "info"),  # no known code: jepsen.hstream calls it unknown
        ("UNAVAILABLE_0", "info"),
        ("ABORTED_0", "info"),
        ("INTERNAL_0", "info"),
    ],
)
def test_server_statuses_are_classified_like_jepsen(rejecting_server, method, expected):
    exc = _sync_error(rejecting_server, method)
    assert classify_error(exc) == expected, exc


def test_deadline_and_connection_refused_are_indeterminate(rejecting_server):
    assert classify_error(_sync_error(rejecting_server, "SLOW", timeout=0.2)) == "info"
    refused = _sync_error(f"127.0.0.1:{_free_port()}", "X", timeout=2)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert classify_error(refused) == "info"


def test_aio_errors_are_classified(rejecting_server):
    async def call(method: str) -> BaseException:
        async with grpc.aio.insecure_channel(rejecting_server) as channel:
            try:
                await channel.unary_unary(f"/t.T/{method}")(b"", timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc
        raise AssertionError("the call should have failed")

    assert classify_error(asyncio.run(call("NOT_FOUND_300"))) == "fail"
    assert classify_error(asyncio.run(call("UNAVAILABLE_0"))) == "info"


def test_plain_exceptions():
    assert classify_error(TimeoutError()) == "info"
    assert classify_error(TimeoutError()) == "info"
    assert classify_error(ConnectionResetError()) == "info"
    assert classify_error(ValueError("decode")) == "info"
    assert classify_error(DefiniteFailure("refused locally")) == "fail"


def test_hstream_error_code_parsing():
    assert hstream_error_code('{"error": 800, "message": "WrongServer"}') == 800
    assert hstream_error_code('garbled {"error": 302') == 302
    assert hstream_error_code("plain text") is None
    assert hstream_error_code(None) is None


def test_history_path_is_file_safe_and_follows_the_reports_root(tmp_path, monkeypatch):
    from harness.cleanup import REPORTS_ENV
    from harness.history import history_path

    monkeypatch.setenv(REPORTS_ENV, str(tmp_path))
    p = history_path("suites/x.py::test_y[n3-kill one]")
    assert p == tmp_path / "histories" / "suites_x.py_test_y_n3-kill_one.jsonl"
    assert history_path("a", tmp_path / "r") == tmp_path / "r" / "histories" / "a.jsonl"
