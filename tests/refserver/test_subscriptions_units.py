"""Pure parts of the subscription engine: the acked-prefix tracker and shard assignment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refserver.api.subscription_assignment import assign
from refserver.api.subscription_progress import OutOfOrderDelivery, Position, ShardProgress


def test_checkpoint_is_the_contiguous_acked_prefix() -> None:
    progress = ShardProgress(Position(1, 0))
    progress.delivered(1, 3)
    progress.delivered(2, 2)
    assert progress.ack(1, 1)
    assert progress.checkpoint == Position(1, 0), "a gap at index 0 holds the checkpoint"
    assert progress.ack(1, 0)
    assert progress.checkpoint == Position(1, 2)
    assert progress.ack(2, 0)
    assert progress.checkpoint == Position(1, 2), "batch 2 acks wait for batch 1 to finish"
    assert progress.ack(1, 2)
    assert progress.checkpoint == Position(2, 1)
    assert progress.ack(2, 1)
    assert progress.checkpoint == Position(3, 0)


def test_duplicate_and_unknown_acks_are_ignored() -> None:
    progress = ShardProgress(Position(5, 0))
    progress.delivered(5, 2)
    assert progress.ack(5, 0)
    assert not progress.ack(5, 0), "a second ack of the same record is not new"
    assert not progress.ack(5, 7), "index beyond the batch"
    assert not progress.ack(9, 0), "batch never delivered"
    assert not progress.ack(4, 0), "batch before the checkpoint"
    assert progress.checkpoint == Position(5, 1)


def test_lsn_gaps_do_not_stall_the_checkpoint() -> None:
    progress = ShardProgress(Position(1, 0))
    progress.delivered(3, 1)
    progress.delivered(10, 1)
    progress.ack(3, 0)
    assert progress.checkpoint == Position(10, 0)
    progress.ack(10, 0)
    assert progress.checkpoint == Position(11, 0)


def test_resume_inside_a_batch_counts_earlier_records_as_acked() -> None:
    progress = ShardProgress(Position(4, 2))
    progress.delivered(4, 4, first_index=2)
    assert progress.is_acked(4, 0) and progress.is_acked(4, 1)
    assert not progress.ack(4, 1), "records before the resume point were acked already"
    progress.ack(4, 2)
    progress.ack(4, 3)
    assert progress.checkpoint == Position(5, 0)


def test_out_of_order_delivery_is_refused() -> None:
    progress = ShardProgress(Position(1, 0))
    progress.delivered(2, 1)
    with pytest.raises(OutOfOrderDelivery):
        progress.delivered(2, 1)
    with pytest.raises(OutOfOrderDelivery):
        ShardProgress(Position(5, 0)).delivered(4, 1)


@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=8),
    data=st.data(),
)
def test_checkpoint_matches_a_brute_force_prefix(sizes: list[int], data: st.DataObject) -> None:
    progress = ShardProgress(Position(1, 0))
    records = []
    for offset, size in enumerate(sizes):
        lsn = 1 + 2 * offset  # gaps between lsns, as after a trim
        progress.delivered(lsn, size)
        records += [(lsn, i) for i in range(size)]
    acked: set[tuple[int, int]] = set()
    for record in data.draw(st.permutations(records)):
        progress.ack(*record)
        acked.add(record)
        first_unacked = next((r for r in records if r not in acked), None)
        expected = Position(*first_unacked) if first_unacked else Position(records[-1][0] + 1, 0)
        assert progress.checkpoint == expected, f"acked {sorted(acked)}"


def test_assignment_spreads_unassigned_shards_over_the_fewest_loaded() -> None:
    assert assign([1, 2, 3], {}, ["a", "b"]) == {1: "a", 2: "b", 3: "a"}


def test_assignment_keeps_existing_owners() -> None:
    assert assign([1, 2], {1: "b", 2: "b"}, ["a", "b"]) == {1: "b", 2: "a"}, (
        "the waiting newcomer a takes one shard from b, which holds two"
    )
    assert assign([1, 2], {1: "a", 2: "b"}, ["a", "b", "c"]) == {1: "a", 2: "b"}, (
        "nobody holds more than one shard, so the newcomer waits"
    )


def test_assignment_reassigns_the_shards_of_a_gone_consumer() -> None:
    assert assign([1, 2, 3, 4], {1: "a", 2: "b", 3: "a", 4: "b"}, ["b"]) == {
        1: "b",
        2: "b",
        3: "b",
        4: "b",
    }
    assert assign([1, 2], {1: "a"}, []) == {}


@given(
    shards=st.lists(st.integers(0, 50), unique=True, max_size=12),
    consumers=st.lists(st.sampled_from("abcdef"), unique=True, max_size=6),
    data=st.data(),
)
def test_assignment_invariants(
    shards: list[int], consumers: list[str], data: st.DataObject
) -> None:
    owned = data.draw(st.lists(st.sampled_from(shards), unique=True)) if shards else []
    current = {s: data.draw(st.sampled_from("abcdefg")) for s in owned}
    result = assign(shards, current, consumers)
    if not consumers:
        assert result == {}
        return
    assert set(result) == set(shards), "every shard has exactly one owner"
    assert set(result.values()) <= set(consumers)
    before = {c: [s for s, o in current.items() if o == c] for c in consumers}
    for shard, owner in current.items():
        if owner in consumers and result[shard] != owner:
            assert len(before[owner]) > 1 and not before[result[shard]], (
                f"shard {shard} moved from {owner} to {result[shard]}: only a consumer "
                f"holding several shards gives one to a waiting one ({current} -> {result})"
            )
    loads = {c: list(result.values()).count(c) for c in consumers}
    if min(loads.values()) == 0:
        assert max(loads.values()) <= 1, f"a consumer waits while another holds several: {loads}"
