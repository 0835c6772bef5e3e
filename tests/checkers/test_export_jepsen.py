"""Export to Jepsen's EDN history shape, read back with a small EDN reader."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from harness.cli import main as cli_main
from harness.export import Keyword, edn, to_jepsen, write_edn
from harness.history import Op, write_ops

# -- a small EDN reader: just what Jepsen's op maps use ------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<open>#\{|[\[{(])|(?P<close>[\]})])|"(?P<str>(?:[^"\\]|\\.)*)"'
    r"|(?P<atom>[^\s,\[\]{}()\"]+))",
    re.S,
)
_UNESCAPE = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class Kw(str):
    """A keyword read back (its name, without the colon)."""


def _atom(text: str) -> Any:
    if text.startswith(":"):
        assert re.fullmatch(r":[A-Za-z*+!?_-][\w.*+!?-]*", text), f"bad keyword {text!r}"
        return Kw(text[1:])
    special = {"nil": None, "true": True, "false": False,
               "##Inf": float("inf"), "##-Inf": float("-inf")}
    if text in special:
        return special[text]
    if text == "##NaN":
        return float("nan")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?", text):
        return float(text)
    raise ValueError(f"not EDN this reader knows: {text!r}")


def read_all(text: str) -> list[Any]:
    """Every top-level EDN form in `text`, with commas as whitespace."""
    pos = 0
    stack: list[tuple[str, list[Any]]] = [("top", [])]
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos == len(text):
            break
        m = _TOKEN.match(text, pos)
        assert m, f"cannot read EDN at {pos}: {text[pos:pos + 40]!r}"
        pos = m.end()
        if m.group("open"):
            stack.append((m.group("open"), []))
            continue
        if m.group("close"):
            kind, items = stack.pop()
            close = m.group("close")
            assert {"[": "]", "{": "}", "#{": "}", "(": ")"}[kind] == close, "unbalanced"
            if kind == "{":
                assert len(items) % 2 == 0, "a map needs key value pairs"
                value: Any = dict(zip(items[::2], items[1::2], strict=True))
            elif kind == "#{":
                value = frozenset(items)
            else:
                value = items
        elif m.group("str") is not None:
            value = re.sub(
                r"\\(u[0-9a-fA-F]{4}|.)",
                lambda e: chr(int(e.group(1)[1:], 16)) if len(e.group(1)) == 5
                else _UNESCAPE[e.group(1)],
                m.group("str"),
            )
        else:
            value = _atom(m.group("atom"))
        stack[-1][1].append(value)
    assert len(stack) == 1, "unbalanced brackets"
    return stack[0][1]


# -- Jepsen's rules, as its history and queue checkers apply them ----------------------------


def _assert_jepsen_history(ops: list[dict]) -> None:
    """Indexes 0..n-1, time from 0 and never back, one op in flight per process, no
    completion without an invocation, no process used after an :info completion."""
    in_flight: dict[Any, dict] = {}
    crashed: set[Any] = set()
    last_time = 0
    for i, op in enumerate(ops):
        assert op[Kw("index")] == i
        assert op[Kw("time")] >= last_time >= 0
        last_time = op[Kw("time")]
        p, t = op[Kw("process")], op[Kw("type")]
        assert isinstance(op[Kw("f")], Kw) and t in ("invoke", "ok", "fail", "info")
        if p == "nemesis":
            assert isinstance(p, Kw) and t == "info"
            continue
        assert type(p) is int and p not in crashed, op
        if t == "invoke":
            assert p not in in_flight, f"process {p} already runs {in_flight.get(p)}"
            in_flight[p] = op
            continue
        inv = in_flight.pop(p)
        assert inv[Kw("f")] == op[Kw("f")]
        if t == "info":
            crashed.add(p)


def _total_queue(ops: list[dict]) -> dict[str, Counter]:
    """Jepsen's total-queue: attempts, acknowledged enqueues, ok dequeues, lost, unexpected."""
    def values(f: str, t: str) -> Counter:
        return Counter(o[Kw("value")] for o in ops if o[Kw("f")] == f and o[Kw("type")] == t)

    attempts, enqueues = values("enqueue", "invoke"), values("enqueue", "ok")
    dequeues = values("dequeue", "ok")
    return {
        "lost": enqueues - dequeues,
        "unexpected": Counter({v: n for v, n in dequeues.items() if v not in attempts}),
        "duplicated": dequeues - attempts - Counter(
            {v: n for v, n in dequeues.items() if v not in attempts}
        ),
        "recovered": (dequeues & attempts) - enqueues,
    }


def _exported(ops: list[Op]) -> list[dict]:
    text = "".join(edn(m) + "\n" for m in to_jepsen(ops).ops)
    return read_all(text)


def _queue_history(hb) -> list[Op]:
    hb.op("admin", "invoke", "subscribe", {"subscription": "sub", "stream": "s"})
    hb.op("admin", "ok", "subscribe",
          {"subscription": "sub", "stream": "s", "ack_timeout_s": 2.0, "offset": "earliest"})
    hb.at(1).append("a", rid=(7, 1, 0), key="k1")
    hb.append("b", result="info", key="k1")  # indeterminate, delivered after all
    hb.append("c", result="fail", key="k2")  # definitely not written
    hb.append("d", rid=(7, 2, 0), key="k2")  # acknowledged, never delivered: lost
    hb.at(2).fetch([("a", (7, 1, 0)), ("b", (7, 3, 0))], "c1")
    hb.ack([(7, 1, 0), (7, 3, 0)], "c1")
    hb.at(3).fetch([("a", (7, 1, 0))], "c1")  # a redelivery
    hb.view("1", {"1": "alive", "2": "suspect"})
    hb.nemesis("kill-one", down=[2])
    hb.op("admin", "invoke", "drain", {"subscription": "sub"})
    hb.at(4).op("admin", "ok", "drain", {"subscription": "sub", "records": []})
    hb.read([("a", (7, 1, 0)), ("b", (7, 3, 0)), ("d", (7, 2, 0))], stream="s", final=True)
    return hb.ops


def test_queue_ops_read_as_jepsen_queue_ops(hb):
    jops = _exported(_queue_history(hb))
    _assert_jepsen_history(jops)
    fs = [(o[Kw("f")], o[Kw("type")], o[Kw("value")]) for o in jops
          if o[Kw("f")] in ("enqueue", "dequeue")]
    assert fs == [
        ("enqueue", "invoke", "a"), ("enqueue", "ok", "a"),
        ("enqueue", "invoke", "b"), ("enqueue", "info", "b"),
        ("enqueue", "invoke", "c"), ("enqueue", "fail", "c"),
        ("enqueue", "invoke", "d"), ("enqueue", "ok", "d"),
        ("dequeue", "invoke", None), ("dequeue", "ok", "a"),
        ("dequeue", "invoke", None), ("dequeue", "ok", "b"),
        ("dequeue", "invoke", None), ("dequeue", "ok", "a"),
    ]
    verdict = _total_queue(jops)
    assert verdict["lost"] == Counter({"d": 1})
    assert verdict["unexpected"] == Counter()
    assert verdict["duplicated"] == Counter({"a": 1})
    assert verdict["recovered"] == Counter({"b": 1})

    by_f = {o[Kw("f")]: o for o in jops if o[Kw("type")] != "invoke"}
    acked = [o for o in jops if o[Kw("f")] == "enqueue" and o[Kw("type")] == "ok"][0]
    assert acked[Kw("hstream")] == {
        Kw("process"): "p1", Kw("stream"): "s", Kw("key"): "k1", Kw("shard"): 7,
        Kw("record-id"): [7, 1, 0],
    }
    delivered = [o for o in jops if o[Kw("f")] == "dequeue" and o[Kw("type")] == "ok"][1]
    assert delivered[Kw("hstream")][Kw("record-id")] == [7, 3, 0]
    assert delivered[Kw("hstream")][Kw("consumer")] == "c1"
    assert by_f["read"][Kw("value")] == ["a", "b", "d"]
    assert by_f["read"][Kw("hstream")][Kw("final")] is True
    assert by_f["await-drain"][Kw("value")] == {Kw("subscription"): "sub"}
    assert by_f["view"][Kw("value")] == {Kw("observer"): "1",
                                         Kw("view"): {"1": "alive", "2": "suspect"}}
    assert by_f["subscribe"][Kw("value")][Kw("ack-timeout-s")] == 2.0
    assert by_f["ack"][Kw("value")][Kw("record-ids")] == [[7, 1, 0], [7, 3, 0]]
    kill = [o for o in jops if o[Kw("f")] == "kill-one"]
    assert [o[Kw("process")] for o in kill] == ["nemesis", "nemesis"]
    assert [o[Kw("type")] for o in kill] == ["info", "info"]
    assert kill[1][Kw("value")][Kw("down")] == [2]
    assert jops[0][Kw("time")] == 0 and jops[-1][Kw("time")] == 4_000_000_000


def test_concurrent_appends_and_reuse_after_info_get_their_own_processes():
    """A batching producer keeps several appends in flight; Jepsen allows one per process
    and none after an :info, so they get further integers, paired by payload id."""
    def op(i, type_, pid, process="p0"):
        value = {"stream": "s", "key": "k", "payload_id": pid}
        return Op(i, process, type_, "append", value, i)

    ops = [op(0, "invoke", "x"), op(1, "invoke", "y"), op(2, "ok", "y"), op(3, "info", "x"),
           op(4, "invoke", "z"), op(5, "ok", "z"), Op(6, 0, "invoke", "append",
                                                     {"payload_id": "w"}, 6),
           Op(7, 0, "ok", "append", {"payload_id": "w"}, 7)]
    jops = _exported(ops)
    _assert_jepsen_history(jops)
    procs = {(o[Kw("value")], o[Kw("type")]): o[Kw("process")] for o in jops}
    assert procs[("x", "invoke")] == procs[("x", "info")]
    assert procs[("y", "invoke")] == procs[("y", "ok")] != procs[("x", "invoke")]
    assert procs[("z", "invoke")] == procs[("y", "invoke")]  # free again, not crashed
    assert procs[("w", "invoke")] == 0  # an integer process keeps its number
    assert 0 not in {procs[("x", "invoke")], procs[("y", "invoke")]}
    assert {o[Kw("hstream")][Kw("process")] for o in jops if o[Kw("value")] != "w"} == {"p0"}


def test_empty_and_broken_fetches_and_orphan_completions(hb):
    hb.fetch([], "c1")  # delivered nothing
    hb.op("c2", "invoke", "fetch", {"subscription": "sub", "consumer": "c2"})
    hb.op("c2", "info", "fetch", {"subscription": "sub", "consumer": "c2"}, error="UNAVAILABLE")
    hb.op("c3", "ok", "append", {"payload_id": "q"})  # no invocation recorded
    exported = to_jepsen(hb.ops)
    assert exported.left_out == 1
    jops = read_all("".join(edn(m) + "\n" for m in exported.ops))
    _assert_jepsen_history(jops)
    done = [(o[Kw("type")], o.get(Kw("error"))) for o in jops if o[Kw("type")] != "invoke"]
    assert done == [("fail", Kw("empty")), ("info", "UNAVAILABLE")]


def test_edn_values_escape_and_read_back():
    value = {
        "payload_id": 'a "quoted"\\ line\nnext\ttab\x01',
        "record_id": (1, 2, 3),
        "nested": [{"deep_key": None}, True, False, 1.5, -2, float("inf")],
        "1": "a member id stays a string key",
        "_private": 1,
        "with space": "string key",
        7: "an integer key",
        "ids": {3, 1, 2},
        "unicode": "ünïcødé ✓",
    }
    text = edn(value)
    (back,) = read_all(text)
    assert back == {
        Kw("payload-id"): 'a "quoted"\\ line\nnext\ttab\x01',
        Kw("record-id"): [1, 2, 3],
        Kw("nested"): [{Kw("deep-key"): None}, True, False, 1.5, -2, float("inf")],
        "1": "a member id stays a string key",
        "_private": 1,
        "with space": "string key",
        7: "an integer key",
        Kw("ids"): frozenset({1, 2, 3}),
        Kw("unicode"): "ünïcødé ✓",
    }
    assert edn(Keyword("kill-one")) == ":kill-one"
    assert edn(float("nan")) == "##NaN"


@pytest.mark.parametrize("vector", [False, True])
def test_write_edn_one_op_per_line_or_one_vector(hb, vector):
    import io

    exported = to_jepsen(_queue_history(hb))
    buf = io.StringIO()
    n = write_edn(exported.ops, buf, vector=vector)
    assert n == len(exported.ops)
    forms = read_all(buf.getvalue())
    if vector:
        assert len(forms) == 1 and len(forms[0]) == n
    else:
        assert len(forms) == n and len(buf.getvalue().splitlines()) == n


def test_cli_export_writes_the_edn_file(hb, tmp_path, capsys):
    path = write_ops(_queue_history(hb), tmp_path / "run.jsonl")
    out = tmp_path / "out" / "run.edn"
    assert cli_main(["export", "--format", "jepsen", str(path), "-o", str(out)]) == 0
    jops = read_all(out.read_text(encoding="utf-8"))
    _assert_jepsen_history(jops)
    assert _total_queue(jops)["lost"] == Counter({"d": 1})
    assert f"to {out}" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
