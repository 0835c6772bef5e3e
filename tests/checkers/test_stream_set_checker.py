"""Stream set checker on hand-made histories: one per anomaly kind, the valid case, edges."""

from __future__ import annotations

from harness.checkers import stream_set


def test_valid_every_acked_append_read_once(hb):
    for i in range(3):
        hb.append(i, rid=(1, i + 1, 0))
    hb.at(1).read([(0, (1, 1, 0)), (1, (1, 2, 0)), (2, (1, 3, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["acknowledged"] == 3 and r.counts["read"] == 3
    assert r.figures["visibility_latency_ms"]["count"] == 3


def test_lost_acked_append_missing_from_final_read(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(1).read([("a", (1, 1, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is False
    assert r.counts["lost"] == 1
    assert r.anomalies["lost"][0]["payload_id"] == "b"
    assert r.anomalies["lost"][0]["record_id"] == [1, 2, 0]


def test_unexpected_read_of_a_record_never_attempted(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).read([("a", (1, 1, 0)), ("ghost", (1, 2, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is False
    assert [x["payload_id"] for x in r.anomalies["unexpected"]] == ["ghost"]


def test_duplicated_is_reported_with_multiplicity_and_fails_only_for_exactly_once(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).read([("a", (1, 1, 0)), ("a", (1, 1, 0))], process="c1", f="fetch")
    hb.at(2).read([("a", (1, 1, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is True
    assert r.anomalies["duplicated"] == [{"payload_id": "a", "reads": 3, "attempts": 1}]
    strict = stream_set.check(hb.ops, exactly_once=True)
    assert strict.valid is False and strict.counts["duplicated"] == 1


def test_retried_append_read_twice_is_not_a_duplicate(hb):
    hb.append("a", result="info")
    hb.append("a", rid=(1, 2, 0))
    hb.at(1).read([("a", (1, 1, 0)), ("a", (1, 2, 0))], final=True)
    r = stream_set.check(hb.ops, exactly_once=True)
    assert r.valid is True, r.summary()
    assert r.counts["duplicated"] == 0


def test_recovered_indeterminate_append_that_was_read(hb):
    hb.append("a", result="info")
    hb.at(1).read([("a", (1, 1, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is True
    assert r.counts["recovered"] == 1 and r.counts["indeterminate"] == 1


def test_indeterminate_append_never_read_is_not_lost(hb):
    hb.append("a", result="info")
    hb.at(1).read([], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is True
    assert r.counts["lost"] == 0


def test_failed_append_that_was_read_fails(hb):
    hb.append("a", result="fail")
    hb.at(1).read([("a", (1, 1, 0))], final=True)
    r = stream_set.check(hb.ops)
    assert r.valid is False
    assert r.counts["failed_but_read"] == 1


def test_stale_complete_read_after_ack_misses_it(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1.0).read([], complete=True, done_at=1.1)  # began after the ack: should have seen a
    hb.at(2.0).read([("a", (1, 1, 0))], final=True, done_at=2.5)
    r = stream_set.check(hb.ops)
    assert r.valid is True  # stale is reported, not failed, unless linearizable
    assert r.counts["stale"] == 1
    assert r.anomalies["stale"][0]["missed_by_reads"] == 1
    assert r.figures["stale_latency_ms"]["max"] == 2500.0
    assert stream_set.check(hb.ops, linearizable=True).valid is False


def test_read_that_began_before_the_ack_is_not_stale(hb):
    hb.op("p1", "invoke", "append", {"stream": "s", "key": "k", "payload_id": "a"})
    hb.at(0.5).read([], complete=True, done_at=1.5)  # concurrent with the append
    hb.at(1.0).op("p1", "ok", "append", {"stream": "s", "key": "k", "payload_id": "a"})
    hb.at(2.0).read([("a", None)], final=True)
    r = stream_set.check(hb.ops, linearizable=True)
    assert r.valid is True, r.summary()
    assert r.counts["stale"] == 0


def test_without_final_read_unread_acked_appends_make_it_unknown(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(1).read([("a", (1, 1, 0))], process="c1", f="fetch")
    r = stream_set.check(hb.ops)
    assert r.valid == "unknown"
    assert r.counts["never_read"] == 1 and r.counts["lost"] == 0
    assert "final read" in r.notes[0]


def test_acked_after_the_final_read_began_is_not_lost(hb):
    hb.op("p1", "invoke", "append", {"stream": "s", "key": "k", "payload_id": "late"})
    hb.at(1).op("r1", "invoke", "read", None)
    hb.at(2).op("p1", "ok", "append", {"stream": "s", "key": "k", "payload_id": "late"})
    hb.at(3).op("r1", "ok", "read", {"records": [], "final": True})
    r = stream_set.check(hb.ops)
    assert r.valid is True
    assert r.counts["unread_late"] == 1 and r.counts["lost"] == 0


def test_final_read_per_stream_judges_only_its_stream(hb):
    hb.append("a", stream="s1", rid=(1, 1, 0))
    hb.append("b", stream="s2", rid=(2, 1, 0))
    hb.at(1).read([("a", (1, 1, 0))], final=True, stream="s1")
    r = stream_set.check(hb.ops)
    assert r.valid == "unknown"  # s2 has no final read
    assert r.counts["lost"] == 0 and r.counts["never_read"] == 1


def test_empty_history_is_valid_and_counts_nothing():
    r = stream_set.check([])
    assert r.valid is True
    assert r.counts["attempted"] == 0 and r.counts["lost"] == 0


def test_result_is_json_serialisable(hb):
    import json

    hb.append("a", rid=(1, 1, 0))
    hb.at(1).read([], final=True)
    json.dumps(stream_set.check(hb.ops).to_json())


def test_reads_scoped_to_a_shard_judge_only_that_shard(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(2, 1, 0))
    hb.at(1).read([("a", (1, 1, 0))], complete=True, stream="s", shard=1)
    hb.at(2).read([("a", (1, 1, 0))], final=True, stream="s", shard=1)
    r = stream_set.check(hb.ops)
    assert r.counts["stale"] == 0 and r.counts["lost"] == 0
    assert r.valid == "unknown" and r.counts["never_read"] == 1  # shard 2 was never drained
    hb.at(3).read([], final=True, stream="s", shard=2)
    r = stream_set.check(hb.ops)
    assert r.valid is False and r.anomalies["lost"][0]["payload_id"] == "b"
