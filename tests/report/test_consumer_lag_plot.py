"""The consumers' lag plot: the queue checker's unseen series per shard, faults shaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.checkers import queue
from harness.history import Op
from harness.report.html import render
from harness.report.model import build, load_results
from harness.report.plots import consumer_lag

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


def attach(directory: Path, name: str, source: str, content: str) -> dict:
    (directory / source).write_text(content)
    return {"name": name, "source": source, "type": "text/plain"}


def lagging_history() -> list[dict]:
    """Two shards, one append a second for 10 s on each; shard 1's consumer is delivered
    each record at once, shard 2's stalls while node 2 is down (3 s to 7 s) and then gets
    the backlog; a final read at 11 s."""
    ops: list[dict] = []
    stalled: list[dict] = []
    for i in range(10):
        t = T0 + i * S
        for shard in (1, 2):
            value = {"stream": "s", "key": f"k{shard}", "payload_id": f"p{shard}-{i}"}
            ops.append({"process": f"producer{shard}", "type": "invoke", "f": "append",
                        "time": t, "value": value})
            ops.append({"process": f"producer{shard}", "type": "ok", "f": "append",
                        "time": t + 10**7, "value": {**value, "record_id": [shard, i + 1, 0]}})
            record = {"payload_id": f"p{shard}-{i}", "record_id": [shard, i + 1, 0],
                      "consumer": f"c{shard}"}
            if shard == 2 and 3 <= i < 7:
                stalled.append(record)
                continue
            records = [record] if shard == 1 or not stalled else [*stalled, record]
            if shard == 2:
                stalled = []
            fetch = {"subscription": "sub", "consumer": f"c{shard}"}
            ops.append({"process": f"c{shard}", "type": "invoke", "f": "fetch",
                        "time": t + 2 * 10**7, "value": fetch})
            ops.append({"process": f"c{shard}", "type": "ok", "f": "fetch",
                        "time": t + 3 * 10**7, "value": {**fetch, "records": records}})
    everything = [{"payload_id": f"p{s}-{i}", "record_id": [s, i + 1, 0]}
                  for s in (1, 2) for i in range(10)]
    ops.append({"process": "reader", "type": "invoke", "f": "read", "time": T0 + 11 * S,
                "value": {"stream": "s"}})
    ops.append({"process": "reader", "type": "ok", "f": "read", "time": T0 + 11 * S + 10**7,
                "value": {"stream": "s", "final": True, "complete": True,
                          "records": everything}})
    ops += nemesis_ops("kill-one", 3.0, 7.0)
    ops.sort(key=lambda op: op["time"])
    return [{"index": i, **op} for i, op in enumerate(ops)]


def queue_result(ops: list[dict]) -> dict:
    history = [Op(o["index"], o["process"], o["type"], o["f"], o["value"], o["time"])
               for o in ops]
    result = queue.check(history, samples=22)
    assert result.valid is True, result.counts
    return json.loads(json.dumps(result.to_json(), default=str))  # as attached


def test_the_lag_of_the_stalled_shard_grows_in_the_fault() -> None:
    ops = lagging_history()
    unseen = queue_result(ops)["figures"]["unseen"]
    assert set(unseen) == {"1", "2"}
    assert max(c for _, c in unseen["1"]) <= 1  # delivered as it was appended
    assert max(c for _, c in unseen["2"]) == 4  # four appends while node 2 was down
    svg = consumer_lag(ops, unseen, "consumer lag: t")
    assert svg.count("<polyline") == 2
    assert "shard 1 (max 1)" in svg or "shard 1 (max 0)" in svg
    assert "shard 2 (max 4)" in svg and "shard 2: at most 4 unseen, 0 at the end" in svg
    [fault] = re.findall(r'<rect x="([\d.]+)"[^>]*class="fault"><title>kill-one 3.0-7.0s', svg)
    assert float(fault) > 60  # the window starts 3 s into the plot, right of the axis
    assert consumer_lag(ops, {}) == ""


def test_the_page_draws_it_next_to_the_other_plots(tmp_path, result) -> None:
    ops = lagging_history()
    d = tmp_path / "allure-results"
    d.mkdir()
    attachments = [
        attach(d, "checker:queue", "q1-attachment.json", json.dumps(queue_result(ops))),
        attach(d, "history", "q2-attachment.jsonl", "\n".join(json.dumps(op) for op in ops)),
    ]
    result(d, "test_queue_through_a_kill[kill-one]", "passed", suite="durability",
           fault="fault=kill-one", attachments=attachments)
    page = render(build(*load_results([d]), [d]), tmp_path / "page.html")
    section = page[page.index('<section id="plots">'):page.index('<section id="details">')]
    labels = re.findall(r'<svg [^>]*aria-label="([^"]*)"', section)
    assert labels == ["appends: test_queue_through_a_kill[kill-one]",
                      "consumer lag: test_queue_through_a_kill[kill-one]"]
    assert section.count('class="fault"') == 2  # the fault shaded on both
