"""Subscription delivery checker on hand-made histories."""

from __future__ import annotations

from harness.checkers import subscription


def _subscribe(hb, ack_timeout_s=2, offset="earliest", sub="sub"):
    v = {"subscription": sub, "stream": "s", "ack_timeout_s": ack_timeout_s, "offset": offset}
    hb.op("admin", "invoke", "subscribe", v)
    hb.op("admin", "ok", "subscribe", v)


def _drain(hb, sub="sub"):
    hb.op("admin", "invoke", "drain", {"subscription": sub})
    hb.op("admin", "ok", "drain", {"subscription": sub, "records": []})


def test_valid_delivered_and_acked_once(hb):
    _subscribe(hb)
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(0.5).fetch([("a", (1, 1, 0)), ("b", (1, 2, 0))], "c1")
    hb.at(0.6).ack([(1, 1, 0), (1, 2, 0)], "c1")
    hb.at(10)
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["records_delivered"] == 2 and r.counts["redeliveries"] == 0


def test_undelivered_acked_append(hb):
    _subscribe(hb)
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(0.5).fetch([("a", (1, 1, 0))], "c1")
    hb.ack([(1, 1, 0)], "c1")
    hb.at(5)
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is False
    assert r.anomalies["undelivered"][0]["payload_id"] == "b"


def test_undelivered_without_a_drain_is_unknown(hb):
    _subscribe(hb)
    hb.append("a", rid=(1, 1, 0))
    r = subscription.check(hb.ops)
    assert r.valid == "unknown"
    assert r.counts["undelivered_without_drain"] == 1


def test_latest_offset_ignores_appends_before_the_subscription(hb):
    hb.append("old", rid=(1, 1, 0))
    hb.at(1)
    _subscribe(hb, offset="latest")
    hb.at(2).append("new", rid=(1, 2, 0))
    hb.at(2.5).fetch([("new", (1, 2, 0))], "c1")
    hb.ack([(1, 2, 0)], "c1")
    hb.at(5)
    _drain(hb)
    assert subscription.check(hb.ops).valid is True


def test_unacked_record_redelivered_after_timeout_is_valid(hb):
    _subscribe(hb, ack_timeout_s=2)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")  # not acked
    hb.at(3.2).fetch([("a", (1, 1, 0))], "c1")  # resent at the deadline
    hb.at(3.3).ack([(1, 1, 0)], "c1")
    hb.at(10)
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["redeliveries"] == 1
    assert r.figures["redelivery_delay_s"]["max"] == 0.2


def test_not_redelivered_after_ack_timeout(hb):
    _subscribe(hb, ack_timeout_s=2)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")  # never acked, never resent
    hb.append("b", rid=(1, 2, 0))
    hb.at(9).fetch([("b", (1, 2, 0))], "c1")  # the subscription was still active
    hb.ack([(1, 2, 0)], "c1")
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is False
    assert r.counts["not_redelivered"] == 1
    assert r.anomalies["not_redelivered"][0]["record_id"] == [1, 1, 0]


def test_run_ending_before_the_deadline_does_not_count(hb):
    _subscribe(hb, ack_timeout_s=30)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(5)
    _drain(hb)
    assert subscription.check(hb.ops).counts["not_redelivered"] == 0


def test_acked_record_redelivered_to_a_live_consumer(hb):
    _subscribe(hb, ack_timeout_s=2)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(1.1).ack([(1, 1, 0)], "c1")
    hb.at(6).fetch([("a", (1, 1, 0))], "c1")
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is False
    assert r.anomalies["acked_redelivered"][0]["after_ack_s"] == 4.9


def test_ack_from_a_consumer_that_died_right_after_excuses_redelivery(hb):
    _subscribe(hb, ack_timeout_s=2)
    hb.op("c1", "invoke", "consume", {"subscription": "sub", "consumer": "c1"})
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(1.1).ack([(1, 1, 0)], "c1")
    hb.at(1.2).op("c1", "info", "consume", {"subscription": "sub", "consumer": "c1"})
    hb.at(4).fetch([("a", (1, 1, 0))], "c2")  # the new owner gets it again
    hb.ack([(1, 1, 0)], "c2")
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.valid is True, r.summary()


def test_redelivery_racing_an_ack_within_grace_is_allowed(hb):
    _subscribe(hb, ack_timeout_s=2)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(2.9).ack([(1, 1, 0)], "c1")
    hb.at(3.0).fetch([("a", (1, 1, 0))], "c1")
    _drain(hb)
    assert subscription.check(hb.ops).valid is True


def test_unknown_ack_timeout_skips_redelivery_rule(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(100).fetch([("b", (1, 2, 0))], "c1")
    _drain(hb)
    r = subscription.check(hb.ops)
    assert r.counts["not_redelivered"] == 0
    assert any("ack timeout unknown" in n for n in r.notes)
    assert subscription.check(hb.ops, ack_timeout_s=2).counts["not_redelivered"] == 1


def test_empty_history():
    r = subscription.check([])
    assert r.valid is True and r.counts["subscriptions"] == 0


def test_driver_protocol_subscribe_op_gives_the_ack_timeout(hb):
    v = {"subscription": "sub", "stream": "s", "ack_timeout": 2, "offset": "earliest"}
    hb.op("d", "invoke", "subscribe", v)
    hb.op("d", "ok", "subscribe", v)
    hb.append("a", rid=(1, 1, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(100).fetch([("b", (1, 2, 0))], "c1")
    _drain(hb)
    assert subscription.check(hb.ops).counts["not_redelivered"] == 1
