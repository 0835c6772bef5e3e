"""Queue checker on hand-made histories: one per anomaly kind, its excuses, the valid case."""

from __future__ import annotations

import json

import pytest

from harness.checkers import CheckOptions, check_all, queue


def _subscribe(hb, sub="sub", offset="earliest", ack_timeout_s=2):
    v = {"subscription": sub, "stream": "s", "ack_timeout_s": ack_timeout_s, "offset": offset}
    hb.op("admin", "invoke", "subscribe", v)
    hb.op("admin", "ok", "subscribe", v)


def _consume(hb, consumer, type="invoke", sub="sub"):
    hb.op(f"{consumer}-life", type, "consume", {"subscription": sub, "consumer": consumer})


def _appends(hb, n, shard=1, first=1):
    """Acknowledged appends p<first>..: one record per batch on `shard`, 10 ms apart."""
    for b in range(first, first + n):
        hb.at(hb.now + 0.01).append(f"p{b}", rid=(shard, b, 0))


def _r(*batches, shard=1):
    return [(f"p{b}", (shard, b, 0)) for b in batches]


def _kinds(result):
    return {k: n for k, n in result.counts.items() if k in queue.KINDS and n}


def test_valid_queue_with_redelivery_reassignment_and_a_final_read(hb):
    _subscribe(hb)
    _consume(hb, "c1")
    _appends(hb, 6)
    _appends(hb, 2, shard=2)
    hb.at(1).fetch(_r(1, 2, 3), "c1")
    hb.ack([(1, 1, 0), (1, 3, 0)], "c1")  # (1,2,0) left unacked
    hb.at(1.5).fetch(_r(1, 2, shard=2), "c1")
    hb.ack([(2, 1, 0), (2, 2, 0)], "c1")
    hb.at(3.5).fetch(_r(2), "c1")  # redelivered after the ack timeout: not a step back
    hb.ack([(1, 2, 0)], "c1")
    _consume(hb, "c2")  # a consumer joins: shard 1 may move
    hb.at(4).fetch(_r(4, 5), "c2")
    hb.ack([(1, 4, 0), (1, 5, 0)], "c2")
    hb.at(4.5).fetch(_r(6), "c2")
    hb.ack([(1, 6, 0)], "c2")
    hb.at(5).read([*_r(1, 2, 3, 4, 5, 6), *_r(1, 2, shard=2)], final=True)
    r = queue.check(hb.ops)
    assert r.valid is True, r.summary()
    assert _kinds(r) == {}
    assert r.counts["redeliveries"] == 1 and r.counts["deliveries"] == 9
    assert r.counts["acked_appends"] == 8 and r.counts["never_seen"] == 0
    # every shard's lag ends at zero; shard 1 had three acked appends unseen at 1 s
    assert r.figures["unseen_final"] == {1: 0, 2: 0}
    assert r.figures["unseen_max"][1] >= 3
    assert all(len(points) == queue.DEFAULT_SAMPLES for points in r.figures["unseen"].values())
    json.dumps(r.to_json())


# -- inconsistent offsets -----------------------------------------------------------------


def test_one_record_id_delivered_with_two_payloads(hb):
    _subscribe(hb)
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 2, 0))
    hb.at(1).fetch([("a", (1, 1, 0))], "c1")
    hb.at(2).fetch([("b", (1, 1, 0))], "c1")  # b under a's record id
    r = queue.check(hb.ops)
    assert r.valid is False
    assert r.counts["inconsistent_offsets"] == 1
    example = r.anomalies["inconsistent_offsets"][0]
    assert example["record_id"] == [1, 1, 0] and example["payloads"] == ["a", "b"]
    assert example["seen_in"] == "fetch"


def test_two_reads_disagree_on_an_unacknowledged_record(hb):
    hb.append("x", result="info")  # indeterminate: its record id comes only from reads
    hb.at(1).read([("x", (1, 7, 0))])
    hb.at(2).read([("y", (1, 7, 0))])
    r = queue.check(hb.ops)
    assert r.counts["inconsistent_offsets"] == 1
    assert r.anomalies["inconsistent_offsets"][0]["payloads"] == ["x", "y"]


# -- lost -----------------------------------------------------------------------------------


def test_acked_append_passed_over_by_a_complete_read_is_lost(hb):
    _appends(hb, 3)
    hb.at(1).read(_r(1, 3), complete=True)
    r = queue.check(hb.ops)
    assert r.valid is False
    assert r.counts["lost"] == 1
    lost = r.anomalies["lost"][0]
    assert lost["payload_id"] == "p2" and lost["later_record"] == [1, 3, 0]
    assert lost["passed_by"] == "complete read"


def test_acked_append_passed_over_by_a_subscription_is_lost(hb):
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(1), "c1")
    _consume(hb, "c1", "info")  # the stream broke: no poll judgement across it
    hb.at(2).fetch(_r(3), "c1")
    r = queue.check(hb.ops)
    assert r.counts["lost"] == 1 and r.counts["poll_skip"] == 0
    assert r.anomalies["lost"][0]["passed_by"] == "subscription sub"


def test_not_yet_read_is_not_lost(hb):
    _appends(hb, 3)
    hb.at(1).read(_r(1, 2), complete=True)
    r = queue.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["never_seen"] == 1 and r.counts["lost"] == 0
    assert r.figures["unseen_final"] == {1: 1}


def test_a_later_record_acked_earlier_is_no_witness(hb):
    # p2 was acknowledged before p1: reading p2 says nothing about p1
    hb.op("p1", "invoke", "append", {"stream": "s", "payload_id": "p1"})
    hb.at(0.1).append("p2", rid=(1, 2, 0))
    hb.at(0.2).op("p1", "ok", "append", {"stream": "s", "payload_id": "p1",
                                         "record_id": [1, 1, 0]})
    hb.at(1).read(_r(2), complete=True)
    r = queue.check(hb.ops)
    assert r.counts["lost"] == 0 and r.counts["never_seen"] == 1


def test_a_latest_subscription_that_started_above_is_no_witness(hb):
    _appends(hb, 2)
    _subscribe(hb, offset="latest")
    _appends(hb, 1, first=3)
    hb.at(1).fetch(_r(3), "c1")
    r = queue.check(hb.ops)
    assert r.valid is True, r.summary()
    assert r.counts["lost"] == 0 and r.counts["never_seen"] == 2


# -- poll skips ---------------------------------------------------------------------------


def test_consumer_skips_an_existing_record(hb):
    _subscribe(hb)
    _appends(hb, 4)
    hb.at(1).fetch(_r(1), "c1")
    hb.at(2).fetch(_r(3, 4), "c1")
    hb.at(3).fetch(_r(2), "c2")  # delivered later, elsewhere: not lost, still skipped
    r = queue.check(hb.ops)
    assert r.valid is False
    assert _kinds(r) == {"poll_skip": 1}
    skip = r.anomalies["poll_skip"][0]
    assert (skip["consumer"], skip["after"], skip["next"], skip["skipped"]) == (
        "c1", [1, 1, 0], [1, 3, 0], 1)
    assert skip["skipped_ids"] == [[1, 2, 0]]


@pytest.mark.parametrize("between", ["consume", "broken-fetch", "nemesis", "other-consumer"])
def test_skips_are_excused_across_a_reassignment(hb, between):
    _subscribe(hb)
    _appends(hb, 4)
    hb.at(1).fetch(_r(1), "c1")
    if between == "consume":
        _consume(hb, "c2")
    elif between == "broken-fetch":
        hb.op("c1", "invoke", "fetch", {"subscription": "sub", "consumer": "c1"})
        hb.op("c1", "info", "fetch", {"subscription": "sub", "consumer": "c1"}, error="x")
    elif between == "nemesis":
        hb.nemesis("kill-one", down=[1])
    else:
        hb.at(1.5).fetch(_r(2), "c2")  # the shard went to c2 for a while
    hb.at(2).fetch(_r(3, 4), "c1")
    r = queue.check(hb.ops)
    assert r.counts["poll_skip"] == 0, r.anomalies["poll_skip"]


def test_a_record_already_delivered_elsewhere_is_not_skipped(hb):
    # c2 had record 2 (and the shard) before c1's epoch began; c1 resumes at 3
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(1, 2), "c2")
    _consume(hb, "c2", "ok")
    hb.at(2).fetch(_r(1), "c1")  # c2's unacked record 1, redelivered to c1
    hb.at(2.1).fetch(_r(3), "c1")
    r = queue.check(hb.ops)
    assert r.counts["poll_skip"] == 0, r.anomalies["poll_skip"]


def test_a_read_that_jumps_over_a_record_skips(hb):
    _appends(hb, 3)
    hb.at(1).read(_r(1, 3))
    r = queue.check(hb.ops)
    assert r.counts["poll_skip"] == 1
    assert r.anomalies["poll_skip"][0]["reader"] == "r1"


def test_a_skip_over_a_record_only_reads_revealed(hb):
    # record 2's append timed out: it exists because a read returned it
    hb.append("p1", rid=(1, 1, 0))
    hb.append("p2", result="info")
    hb.append("p3", rid=(1, 3, 0))
    _subscribe(hb)
    hb.at(1).read(_r(1, 2, 3), final=True)
    hb.at(2).fetch(_r(1), "c1")
    hb.at(3).fetch(_r(3), "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"poll_skip": 1}
    assert r.anomalies["poll_skip"][0]["skipped_ids"] == [[1, 2, 0]]


# -- non-monotonic polls --------------------------------------------------------------------


def test_consumer_steps_back_to_a_record_never_delivered(hb):
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(2, 3), "c1")
    hb.at(2).fetch(_r(1), "c1")
    r = queue.check(hb.ops)
    assert r.valid is False
    assert r.counts["nonmonotonic_poll"] == 1
    step = r.anomalies["nonmonotonic_poll"][0]
    assert step["after"] == [1, 3, 0] and step["got"] == [[1, 1, 0]]


def test_redelivery_of_an_acked_record_is_a_step_back_and_a_duplicate(hb):
    _subscribe(hb)
    _appends(hb, 2)
    hb.at(1).fetch(_r(1, 2), "c1")
    hb.ack([(1, 1, 0), (1, 2, 0)], "c1")
    hb.at(5).fetch(_r(1), "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"nonmonotonic_poll": 1, "duplicates": 1}
    assert r.valid is False


def test_an_ack_inside_the_grace_does_not_count(hb):
    _subscribe(hb)
    _appends(hb, 2)
    hb.at(1).fetch(_r(1, 2), "c1")
    hb.at(3).ack([(1, 1, 0)], "c1")
    hb.at(3.5).fetch(_r(1), "c1")  # resent as the late ack was on its way
    r = queue.check(hb.ops, grace_s=1.0)
    assert _kinds(r) == {}, r.anomalies


def test_a_step_back_across_a_reassignment_is_only_a_duplicate(hb):
    # the new owner resumes from the checkpoint: acked records come again
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(1, 2, 3), "c1")
    hb.ack([(1, 1, 0), (1, 2, 0), (1, 3, 0)], "c1")
    hb.nemesis("kill-one", down=[2])
    hb.at(5).fetch(_r(2, 3), "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"duplicates": 2}
    assert r.valid is True, r.summary()


def test_own_unacked_record_resent_after_another_node_s_consumer_acked_it(hb):
    # Two nodes serve one subscription at once (StreamingFetch is not ownership-checked; a
    # lookup that moved between two consumers' reconnects, or a cached one, sends them to
    # different nodes), each node sending its consumer every shard. c1 leaves record 2
    # unacked; c2 acks it on the other node, which c1's node never hears of; after c1's ack
    # timeout its node resends 2, behind the newer 3: c1's own redelivery, a duplicate only.
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(1, 2), "c1")
    hb.ack([(1, 1, 0)], "c1")
    hb.at(1.1).fetch(_r(1, 2), "c2")
    hb.ack([(1, 1, 0), (1, 2, 0)], "c2")
    hb.at(3.2).fetch(_r(3, 2), "c1")
    hb.ack([(1, 2, 0), (1, 3, 0)], "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"duplicates": 1}, r.anomalies
    assert r.valid is True, r.summary()


def test_a_record_another_consumer_acked_is_no_own_redelivery(hb):
    # c1 never had record 2: getting it below its frontier after c2 acked it is a step back
    # whoever served whom.
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(2), "c2")
    hb.ack([(1, 2, 0)], "c2")
    hb.at(3).fetch(_r(1, 3, 2), "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"nonmonotonic_poll": 1, "duplicates": 1}, r.anomalies
    assert r.anomalies["nonmonotonic_poll"][0]["got"] == [[1, 2, 0]]


def test_an_own_acked_record_resent_is_still_a_step_back_after_another_consumer_had_it(hb):
    # c1 acked record 2 itself: its resend is a step back even though c2 also had it.
    _subscribe(hb)
    _appends(hb, 3)
    hb.at(1).fetch(_r(1, 2), "c1")
    hb.ack([(1, 1, 0), (1, 2, 0)], "c1")
    hb.at(1.1).fetch(_r(2), "c2")
    hb.at(3.2).fetch(_r(3, 2), "c1")
    r = queue.check(hb.ops)
    assert _kinds(r) == {"nonmonotonic_poll": 1, "duplicates": 1}, r.anomalies


# -- duplicates and the promise ---------------------------------------------------------------


def test_duplicates_fail_only_an_exactly_once_promise(hb):
    _subscribe(hb)
    _appends(hb, 1)
    hb.at(1).fetch(_r(1), "c1")
    hb.ack([(1, 1, 0)], "c1")
    _consume(hb, "c1", "info")
    hb.at(5).fetch(_r(1), "c1")
    hb.ack([(1, 1, 0)], "c1")
    at_least = queue.check(hb.ops, promise="at-least-once")
    assert at_least.valid is True and at_least.counts["duplicates"] == 1
    assert any("at-least-once" in note for note in at_least.notes)
    exactly = queue.check(hb.ops, promise="exactly-once")
    assert exactly.valid is False and exactly.counts["duplicates"] == 1


def test_redelivery_of_an_unacked_record_is_no_duplicate(hb):
    _subscribe(hb)
    _appends(hb, 1)
    hb.at(1).fetch(_r(1), "c1")
    hb.at(3.2).fetch(_r(1), "c1")
    hb.ack([(1, 1, 0)], "c1")
    r = queue.check(hb.ops, promise="exactly-once")
    assert r.valid is True and r.counts["redeliveries"] == 1


def test_unknown_promise_is_refused():
    with pytest.raises(ValueError, match="unknown delivery promise"):
        queue.check([], promise="at-most-once")


# -- unseen over time -------------------------------------------------------------------------


def test_unseen_counts_acked_appends_not_yet_read(hb):
    hb.at(0).append("p1", rid=(1, 1, 0))
    hb.at(1).append("p2", rid=(1, 2, 0))
    hb.at(2).append("p3", rid=(1, 3, 0))
    hb.at(3).read(_r(1, 2))
    hb.at(4).read(_r(3))
    r = queue.check(hb.ops, samples=4)
    # samples at 1, 2, 3 and 4 s: two acked by 1 s, three by 2 s, two seen at 3 s
    assert r.figures["unseen"] == {1: [(1.0, 2), (2.0, 3), (3.0, 1), (4.0, 0)]}
    assert r.figures["unseen_max"] == {1: 3} and r.figures["unseen_final"] == {1: 0}


# -- registration ---------------------------------------------------------------------------


def test_named_in_check_all_with_the_promise_from_the_options(hb):
    _subscribe(hb)
    _appends(hb, 1)
    hb.at(1).fetch(_r(1), "c1")
    hb.ack([(1, 1, 0)], "c1")
    _consume(hb, "c1", "info")
    hb.at(5).fetch(_r(1), "c1")
    report = check_all(hb.ops, CheckOptions(checkers=["queue"]))
    assert report.valid is True and set(report.results) == {"queue"}
    report = check_all(hb.ops, CheckOptions(checkers=["queue"], exactly_once=True))
    assert report.valid is False and report.results["queue"].counts["duplicates"] == 1


def test_two_appends_acknowledged_with_one_record_id(hb):
    hb.append("a", rid=(1, 1, 0))
    hb.append("b", rid=(1, 1, 0))
    hb.append("c", rid=(1, 2, 0))
    hb.at(1).read([("a", (1, 1, 0)), ("c", (1, 2, 0))], final=True)
    r = queue.check(hb.ops)
    assert _kinds(r) == {"inconsistent_offsets": 1}
    assert r.anomalies["inconsistent_offsets"][0]["seen_in"] == "append"


def test_each_append_bound_to_a_taken_record_id_is_named_once_in_order(hb):
    # The first acknowledged append placed at a record id holds it; each later one with
    # another payload id joins the conflict, in the appends' order; the first's own payload
    # id again is none.
    for pid, rid in [("d", (1, 3, 0)), ("a", (1, 1, 0)), ("b", (1, 1, 0)), ("a", (1, 1, 0)),
                     ("e", (1, 3, 0)), ("c", (1, 1, 0)), ("f", (1, 4, 0))]:
        hb.append(pid, rid=rid)
    hb.at(1).read([("a", (1, 1, 0)), ("d", (1, 3, 0)), ("f", (1, 4, 0))], final=True)
    r = queue.check(hb.ops)
    assert _kinds(r) == {"inconsistent_offsets": 2}
    assert [(x["record_id"], x["payloads"]) for x in r.anomalies["inconsistent_offsets"]] == [
        ([1, 1, 0], ["a", "b", "c"]), ([1, 3, 0], ["d", "e"])]


def test_a_record_revealed_later_splits_an_earlier_run(hb):
    hb.append("p1", rid=(1, 1, 0))
    hb.append("p2", result="info")
    hb.append("p3", rid=(1, 3, 0))
    _subscribe(hb)
    hb.at(1).fetch(_r(1, 3), "c1")  # consecutive among the acknowledged ids...
    hb.at(2).read(_r(1, 2, 3), final=True)  # ...but record 2 exists
    r = queue.check(hb.ops)
    assert _kinds(r) == {"poll_skip": 1}, r.anomalies
    assert r.anomalies["poll_skip"][0]["skipped_ids"] == [[1, 2, 0]]


def test_one_fetch_op_for_two_consumers_is_judged_per_consumer(hb):
    _subscribe(hb)
    _appends(hb, 4)
    hb.at(1).fetch(_r(1), "c1")
    recs = [{"payload_id": "p3", "record_id": [1, 3, 0], "consumer": "c1"},
            {"payload_id": "p2", "record_id": [1, 2, 0], "consumer": "c2"}]
    hb.op("c1", "invoke", "fetch", {"subscription": "sub"})
    hb.op("c1", "ok", "fetch", {"subscription": "sub", "records": recs})
    r = queue.check(hb.ops)
    # c1 went from 1 to 3 over 2, which nobody had yet: a skip; c2's 2 is its first
    assert _kinds(r) == {"poll_skip": 1}
    assert r.anomalies["poll_skip"][0]["consumer"] == "c1"


def test_records_only_reads_revealed_keep_their_order(hb):
    # two indeterminate appends between two acknowledged ones, in a batch of two
    hb.append("p1", rid=(1, 1, 0))
    hb.append("x0", result="info")
    hb.append("x1", result="info")
    hb.append("p3", rid=(1, 3, 0))
    _subscribe(hb)
    batch = [("p1", (1, 1, 0)), ("x0", (1, 2, 0)), ("x1", (1, 2, 1)), ("p3", (1, 3, 0))]
    hb.at(1).fetch(batch, "c1")
    hb.at(2).read(batch, final=True)
    r = queue.check(hb.ops)
    assert r.valid is True and _kinds(r) == {}, r.anomalies
