"""The reachability checker on hand-made histories: reached, vacuous, no overlapping op, a
fault on a node that owned nothing the workload used."""

from __future__ import annotations

import pytest

from harness.checkers import CheckOptions, check_all, reach, verdict_word
from harness.checkers.result import merge_valid
from harness.history import Op
from harness.wire import KEY_SPACE_MAX, key_hash

STREAM, SUB = "s", "sub"
HALF = KEY_SPACE_MAX // 2
# Two shards split the ring in halves; node 2 owns shard 1 and the subscription, node 1
# owns shard 2, node 3 owns nothing the workload used.
SHARDS = {STREAM: [[1, "0", str(HALF)], [2, str(HALF + 1), str(KEY_SPACE_MAX)]]}
OWNERS = {f"shard-owner:{STREAM}/1": 2, f"shard-owner:{STREAM}/2": 1,
          f"subscription-owner:{SUB}": 2}
SEEDS = [1, 2, 3]


def key_in(shard: int) -> str:
    """A key whose hash falls in shard 1 (lower half) or 2."""
    for i in range(1000):
        key = f"k{i}"
        if (key_hash(key) <= HALF) == (shard == 1):
            return key
    raise AssertionError("no key found")


class Ops:
    """Ops with explicit times (seconds), for building histories by hand."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, t: float, process, type_: str, f: str, value=None) -> Op:
        op = Op(len(self.ops), process, type_, f, value, int(t * 1e9))
        self.ops.append(op)
        return op

    def fault(self, t0: float, t1: float, node: int, name: str = "kill-one",
              store: bool = False) -> None:
        roles = {str(node): sorted(r for r, n in OWNERS.items() if n == node)
                 + (["seed"] if node in SEEDS else [])}
        hit = {"nodes": [] if store else [node], "store": store, "owners": OWNERS,
               "seeds": SEEDS, "shards": SHARDS, "calls": [], "errors": [],
               "roles": {} if store else roles}
        start = {"action": "start", "nodes": [] if store else [node], "hit": hit}
        self.add(t0, "nemesis", "invoke", name, start)
        self.add(t0 + 0.01, "nemesis", "ok", name, {**start, "down": [node], "up": []})
        stop = {"action": "stop", "nodes": [node]}
        self.add(t1, "nemesis", "invoke", name, stop)
        self.add(t1 + 0.01, "nemesis", "ok", name, {**stop, "down": [], "up": [node]})

    def append(self, t0: float, t1: float | None, key: str, pid: str, ok: bool = True) -> None:
        value = {"stream": STREAM, "key": key, "payload_id": pid}
        self.add(t0, "p", "invoke", "append", value)
        if t1 is not None:
            self.add(t1, "p", "ok" if ok else "info", "append", value)


def test_a_kill_of_the_shard_owner_during_an_append_reached():
    h = Ops()
    h.append(1.0, 1.1, key_in(1), "a")
    h.append(2.0, 3.5, key_in(1), "b")  # in flight when the owner of shard 1 is killed
    h.fault(2.5, 4.0, node=2)
    result = reach.check(sorted(h.ops, key=lambda o: o.time),
                         reached=("shard-owner", "in-flight-append"))
    assert result.valid is True, result.notes
    [fault] = result.figures["faults"]
    assert fault["nodes"] == [2]
    assert fault["events"]["in-flight-append"] == 1
    assert f"shard-owner:{STREAM}/1" in fault["roles"]["2"]


def test_an_unanswered_append_is_placed_by_its_key():
    h = Ops()
    h.append(2.0, None, key_in(1), "b")  # never answered: no shard recorded
    h.fault(2.5, 4.0, node=2)
    assert reach.check(h.ops, reached=("in-flight-append",)).valid is True


def test_a_kill_of_another_shards_owner_is_vacuous():
    h = Ops()
    h.append(2.0, 3.5, key_in(2), "b")  # shard 2 is owned by node 1
    h.fault(2.5, 4.0, node=2)
    result = reach.check(h.ops, reached=("shard-owner", "in-flight-append"))
    assert result.valid == "vacuous"
    assert result.counts["vacuous"] == 1
    assert result.notes[0].startswith("vacuous: no fault reached all of")


def test_a_fault_with_no_overlapping_op():
    h = Ops()
    h.append(1.0, 1.5, key_in(1), "a")  # done before the fault
    h.fault(2.0, 3.0, node=2)
    h.append(4.0, 4.5, key_in(1), "b")  # begun after its stop
    ops = sorted(h.ops, key=lambda o: o.time)
    assert reach.check(ops, reached=("shard-owner",)).valid is True
    vacuous = reach.check(ops, reached=("shard-owner", "in-flight-append"))
    assert vacuous.valid == "vacuous"
    assert vacuous.figures["faults"][0]["events"].get("in-flight-append") is None


def test_a_fault_on_a_node_that_owned_nothing_the_workload_used():
    h = Ops()
    h.append(2.0, 3.5, key_in(1), "a")
    h.add(2.1, "c", "invoke", "fetch", {"subscription": SUB, "consumer": "c1"})
    h.fault(2.5, 4.0, node=3)
    h.add(3.6, "c", "ok", "fetch", {"subscription": SUB, "consumer": "c1", "records": []})
    ops = sorted(h.ops, key=lambda o: o.time)
    faults = reach.analyse(ops)
    assert faults[0].roles == {"3": ["seed"]}  # a seed, owner of nothing
    for wanted in ("shard-owner", "subscription-owner", "in-flight-append", "in-flight-fetch"):
        assert reach.check(ops, reached=(wanted,)).valid == "vacuous", wanted
    assert reach.check(ops, reached=("seed",)).valid is True


def test_records_delivered_and_not_acked_when_the_subscription_owner_dies():
    h = Ops()
    ids = [[1, 7, 0], [1, 7, 1], [1, 7, 2]]
    h.add(1.0, "c", "invoke", "fetch", {"subscription": SUB, "consumer": "c1"})
    h.add(1.2, "c", "ok", "fetch", {"subscription": SUB, "consumer": "c1",
                                    "records": [{"payload_id": str(i), "record_id": r}
                                                for i, r in enumerate(ids)]})
    h.add(1.3, "c", "invoke", "ack", {"subscription": SUB, "consumer": "c1",
                                      "record_ids": ids[:1]})
    h.add(1.3, "c", "ok", "ack", None)
    h.fault(2.0, 3.0, node=2)
    result = reach.check(h.ops, reached=("subscription-owner", "unacked-delivery"))
    assert result.valid is True
    assert result.figures["faults"][0]["events"]["unacked-delivery"] == 2
    # The same history with node 1 hit: it owned no subscription, nothing was in flight.
    other = Ops()
    other.ops = [op for op in h.ops if not op.is_nemesis]
    other.fault(2.0, 3.0, node=1)
    assert reach.check(other.ops, reached=("unacked-delivery",)).valid == "vacuous"


def test_a_store_fault_reaches_every_op_in_flight():
    h = Ops()
    h.append(2.0, 3.5, key_in(2), "b")
    h.fault(2.5, 4.0, node=0, name="kill-store", store=True)
    assert reach.check(h.ops, reached=("store", "in-flight-append")).valid is True


def test_an_exact_role_is_an_event():
    h = Ops()
    h.fault(2.0, 3.0, node=2)
    assert reach.check(h.ops, reached=(f"subscription-owner:{SUB}",)).valid is True
    assert reach.check(h.ops, reached=("subscription-owner:other",)).valid == "vacuous"


def test_no_fault_at_all_is_vacuous_and_nothing_asked_is_valid():
    h = Ops()
    h.append(1.0, 1.1, key_in(1), "a")
    assert reach.check(h.ops, reached=("shard-owner",)).anomalies["vacuous"][0]["why"] == (
        "no fault in the history")
    assert reach.check(h.ops).valid is True


def test_an_unknown_event_is_one_clear_line():
    with pytest.raises(reach.UnknownEvent, match="unknown reachability event 'owner'; known:"):
        reach.check([], reached=("owner",))


def test_check_all_merges_vacuous_between_true_and_unknown():
    h = Ops()
    h.append(1.0, 1.1, key_in(1), "a")
    h.fault(2.0, 3.0, node=3)
    report = check_all(h.ops, CheckOptions(checkers=["order"], reached=("shard-owner",)))
    assert report.valid == "vacuous" and verdict_word(report.valid) == "VACUOUS"
    assert "reach" in report.results
    assert merge_valid([True, "vacuous"]) == "vacuous"
    assert merge_valid(["vacuous", "unknown"]) == "unknown"
    assert merge_valid(["vacuous", False]) is False


def test_require_reached_ends_a_test_as_vacuous():
    h = Ops()
    h.fault(2.0, 3.0, node=3)
    with pytest.raises(pytest.skip.Exception, match="^vacuous: .*no fault reached all of"):
        reach.require_reached(h.ops, ("shard-owner",))
    assert reach.require_reached(h.ops, ("seed",)).valid is True
