"""Order checker on hand-made histories: one per anomaly kind, the valid case, edges."""

from __future__ import annotations

from harness.checkers import order


def test_valid_increasing_ids_and_producer_order(hb):
    for i in range(4):
        hb.append(i, key="k", rid=(7, i + 1, 0))
    hb.at(1).read([(i, (7, i + 1, 0)) for i in range(4)], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["records_checked"] == 4


def test_indices_within_one_batch_increase(hb):
    # A batching producer: both records in flight together, acknowledged as one batch.
    va = {"stream": "s", "key": "k", "payload_id": "a"}
    vb = {"stream": "s", "key": "k", "payload_id": "b"}
    hb.op("p1", "invoke", "append", va)
    hb.op("p1", "invoke", "append", vb)
    hb.op("p1", "ok", "append", {**va, "record_id": [7, 1, 0]})
    hb.op("p1", "ok", "append", {**vb, "record_id": [7, 1, 1]})
    hb.at(1).read([("a", (7, 1, 0)), ("b", (7, 1, 1))], process="c1", f="fetch")
    assert order.check(hb.ops).valid is True


def test_shard_order_violation(hb):
    hb.append("a", process="p1", key="x", rid=(7, 1, 0))
    hb.append("b", process="p2", key="y", rid=(7, 2, 0))
    hb.at(1).read([("b", (7, 2, 0)), ("a", (7, 1, 0))], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.valid is False
    assert r.counts["shard_order"] == 1
    assert r.anomalies["shard_order"][0]["previous"] == [7, 2, 0]
    assert r.anomalies["shard_order"][0]["seen"] == [7, 1, 0]
    assert r.counts["key_order"] == 0  # different producers and keys


def test_redelivery_is_not_an_order_violation(hb):
    hb.append("a", rid=(7, 1, 0))
    hb.append("b", rid=(7, 2, 0))
    hb.at(1).read([("a", (7, 1, 0)), ("b", (7, 2, 0))], process="c1", f="fetch")
    hb.at(2).read([("a", (7, 1, 0))], process="c1", f="fetch")  # resent after ack timeout
    r = order.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["redeliveries"] == 1


def test_each_reader_has_its_own_sequence(hb):
    hb.append("a", rid=(7, 1, 0))
    hb.append("b", rid=(7, 2, 0))
    hb.at(1).read([("b", (7, 2, 0))], process="c1", f="fetch")
    hb.at(2).read([("a", (7, 1, 0)), ("b", (7, 2, 0))], process="c2", f="fetch")
    assert order.check(hb.ops).valid is True


def test_complete_reads_are_judged_one_by_one(hb):
    hb.append("a", rid=(7, 1, 0))
    hb.append("b", rid=(7, 2, 0))
    hb.at(1).read([("a", (7, 1, 0)), ("b", (7, 2, 0))], complete=True)
    hb.at(2).read([("b", (7, 2, 0)), ("a", (7, 1, 0))], complete=True)  # same reader process
    r = order.check(hb.ops)
    assert r.valid is False
    assert r.counts["shard_order"] == 1 and r.counts["redeliveries"] == 0


def test_key_order_violation(hb):
    # Same producer and key, acknowledged in order, read back swapped (on two shards, so
    # only the per-key check can see it).
    hb.append("first", process="p1", key="k", rid=(1, 5, 0))
    hb.append("second", process="p1", key="k", rid=(2, 3, 0))
    hb.at(1).read([("second", (2, 3, 0)), ("first", (1, 5, 0))], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.valid is False
    assert r.counts["key_order"] == 1
    assert r.anomalies["key_order"][0]["read_after"] == "second"


def test_indeterminate_appends_are_outside_key_order(hb):
    hb.append("timed-out", process="p1", key="k", result="info")
    hb.append("next", process="p1", key="k", rid=(1, 1, 0))
    hb.at(1).read([("next", (1, 1, 0)), ("timed-out", (1, 2, 0))], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.valid is True, r.summary()


def test_append_order_violation(hb):
    hb.append("a", rid=(3, 10, 0))
    hb.append("b", rid=(3, 9, 0))  # invoked after a was acknowledged, smaller batch id
    r = order.check(hb.ops)
    assert r.valid is False
    assert r.anomalies["append_order"][0]["earlier_acked_max_batch"] == 10


def test_concurrent_appends_may_take_either_order(hb):
    hb.op("p1", "invoke", "append", {"stream": "s", "key": "k", "payload_id": "a"})
    hb.op("p2", "invoke", "append", {"stream": "s", "key": "j", "payload_id": "b"})
    hb.op("p1", "ok", "append", {"stream": "s", "key": "k", "payload_id": "a",
                                 "record_id": [3, 10, 0]})
    hb.op("p2", "ok", "append", {"stream": "s", "key": "j", "payload_id": "b",
                                 "record_id": [3, 9, 0]})
    assert order.check(hb.ops).valid is True


def test_record_id_conflict_two_payloads_one_id(hb):
    hb.append("a", rid=(3, 1, 0))
    hb.at(1).read([("b", (3, 1, 0))], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.valid is False
    assert r.anomalies["record_id_conflict"][0]["payloads"] == ["a", "b"]


def test_record_id_conflict_payload_read_under_another_id(hb):
    hb.append("a", rid=(3, 1, 0))
    hb.at(1).read([("a", (3, 2, 0))], process="c1", f="fetch")
    r = order.check(hb.ops)
    assert r.counts["record_id_conflict"] == 1


def test_empty_history():
    r = order.check([])
    assert r.valid is True and r.counts["records_checked"] == 0
