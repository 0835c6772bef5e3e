"""Pure parts of the gossip layer: incarnation rules, dissemination queue, flags, wire."""

from __future__ import annotations

import argparse

import pytest

from harness.protos import HStreamGossip_pb2, HStreamInternal_pb2
from refserver.gossip import GossipConfig, decode_view, parse_seeds
from refserver.gossip.broadcasts import BroadcastQueue
from refserver.gossip.config import BadSeedList
from refserver.gossip.members import MemberTable
from refserver.gossip.wire import event_message, with_state
from refserver.membership import MemberState, NodeAddress

A = NodeAddress(2, "127.0.0.2", 6570, "127.0.0.2", 6571)
A_MOVED = NodeAddress(2, "127.0.0.9", 6570, "127.0.0.9", 6571)


def table_with(state: MemberState, incarnation: int) -> MemberTable:
    table = MemberTable()
    table.apply_alive(A, incarnation)
    if state is MemberState.SUSPECT:
        table.apply_suspect(A.id, incarnation)
    elif state is MemberState.DEAD:
        table.apply_confirm(A.id, incarnation)
    record = table.get(A.id)
    assert record is not None and (record.state, record.incarnation) == (state, incarnation)
    return table


def state_of(table: MemberTable) -> tuple[MemberState, int]:
    record = table.get(A.id)
    assert record is not None
    return record.state, record.incarnation


@pytest.mark.parametrize(
    "state, known, message, incarnation, expected",
    [
        # Alive(i) wins only if i > known, from any state
        (MemberState.ALIVE, 5, "alive", 5, None),
        (MemberState.ALIVE, 5, "alive", 6, (MemberState.ALIVE, 6)),
        (MemberState.SUSPECT, 5, "alive", 5, None),
        (MemberState.SUSPECT, 5, "alive", 6, (MemberState.ALIVE, 6)),
        (MemberState.DEAD, 5, "alive", 5, None),
        (MemberState.DEAD, 5, "alive", 6, (MemberState.ALIVE, 6)),
        # Suspect(i): i >= inc on alive, i > inc on suspect, never on dead
        (MemberState.ALIVE, 5, "suspect", 4, None),
        (MemberState.ALIVE, 5, "suspect", 5, (MemberState.SUSPECT, 5)),
        (MemberState.ALIVE, 5, "suspect", 7, (MemberState.SUSPECT, 7)),
        (MemberState.SUSPECT, 5, "suspect", 5, None),
        (MemberState.SUSPECT, 5, "suspect", 6, (MemberState.SUSPECT, 6)),
        (MemberState.DEAD, 5, "suspect", 9, None),
        # Confirm(i): i >= inc and not already dead
        (MemberState.ALIVE, 5, "confirm", 4, None),
        (MemberState.ALIVE, 5, "confirm", 5, (MemberState.DEAD, 5)),
        (MemberState.SUSPECT, 5, "confirm", 5, (MemberState.DEAD, 5)),
        (MemberState.SUSPECT, 5, "confirm", 4, None),
        (MemberState.DEAD, 5, "confirm", 6, None),
    ],
)
def test_incarnation_rules(
    state: MemberState,
    known: int,
    message: str,
    incarnation: int,
    expected: tuple[MemberState, int] | None,
) -> None:
    table = table_with(state, known)
    epoch = table.epoch
    if message == "alive":
        changed = table.apply_alive(A, incarnation)
    elif message == "suspect":
        changed = table.apply_suspect(A.id, incarnation)
    else:
        changed = table.apply_confirm(A.id, incarnation)
    if expected is None:
        assert changed is None and state_of(table) == (state, known) and table.epoch == epoch
    else:
        assert changed is not None and state_of(table) == expected and table.epoch == epoch + 1


def test_unknown_members_are_added_only_by_alive() -> None:
    table = MemberTable()
    assert table.apply_suspect(A.id, 9) is None and table.apply_confirm(A.id, 9) is None
    assert A.id not in table
    assert table.apply_alive(A, 0) is not None and state_of(table) == (MemberState.ALIVE, 0)


def test_winning_alive_carries_new_addresses() -> None:
    table = table_with(MemberState.DEAD, 3)
    table.apply_alive(A_MOVED, 4)
    record = table.get(A.id)
    assert record is not None and record.node == A_MOVED


def msg(n: int) -> HStreamGossip_pb2.Message:
    return event_message("e", n, b"")


def test_broadcasts_go_freshest_first_and_stop_at_the_limit() -> None:
    queue = BroadcastQueue()
    for n in range(3):
        queue.queue(("k", n), msg(n))
    assert [m.event.lamportTime for m in queue.take(limit=2)] == [2, 1, 0]
    queue.queue(("k", 3), msg(3))
    # the never-sent update leads, then the rest (already sent once) freshest first
    assert [m.event.lamportTime for m in queue.take(limit=2)] == [3, 2, 1, 0]
    assert [m.event.lamportTime for m in queue.take(limit=2)] == [3]
    assert queue.take(limit=2) == [] and len(queue) == 0


def test_newer_update_about_a_member_replaces_the_older() -> None:
    queue = BroadcastQueue()
    queue.queue(("state", 2), msg(1))
    queue.take(limit=5)
    queue.queue(("state", 2), msg(2))
    assert [m.event.lamportTime for m in queue.take(limit=5)] == [2]


def test_piggyback_budget_bounds_one_message() -> None:
    queue = BroadcastQueue()
    for n in range(10):
        queue.queue(n, msg(n))
    assert len(queue.take(limit=1, budget=4)) == 4 and len(queue) == 6


def test_seed_parsing() -> None:
    assert parse_seeds("127.0.0.1:7000, 127.0.0.2") == [("127.0.0.1", 7000), ("127.0.0.2", 6571)]
    with pytest.raises(BadSeedList, match="bad seed node '127.0.0.1:x'"):
        parse_seeds("127.0.0.1:x")
    with pytest.raises(BadSeedList, match="names no node"):
        parse_seeds(" , ")


def test_flags_default_to_the_real_server_and_convert_ms() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed-nodes")
    GossipConfig.add_cli_arguments(parser)
    me = NodeAddress(1, "127.0.0.1", 6570, "127.0.0.1", 6571)
    default = GossipConfig.from_args(parser.parse_args([]), me, frozenset())
    assert (default.probe_interval, default.roundtrip_timeout, default.indirect_checks) == (
        2.0,
        0.5,
        1,
    )
    assert (default.gossip_interval, default.fanout, default.seeds) == (
        1.0,
        3,
        [("127.0.0.1", 6571)],
    )
    fast = GossipConfig.from_args(
        parser.parse_args(
            [
                "--probe-interval-ms",
                "200",
                "--roundtrip-timeout-ms",
                "100",
                "--seed-nodes",
                "127.0.0.3",
            ]
        ),
        me,
        frozenset({"no-refute"}),
    )
    assert (fast.probe_interval, fast.roundtrip_timeout, fast.seeds) == (
        0.2,
        0.1,
        [("127.0.0.3", 6571)],
    )
    assert fast.defects == frozenset({"no-refute"})
    with pytest.raises(ValueError, match="round-trip timeout .* shorter than the probe"):
        GossipConfig.from_args(
            parser.parse_args(["--probe-interval-ms", "100", "--roundtrip-timeout-ms", "100"]),
            me,
            frozenset(),
        )


def test_suspicion_and_retransmit_scale_with_cluster_size() -> None:
    config = GossipConfig(self_node=A, seeds=[("127.0.0.2", 6571)], probe_interval=1.0)
    assert config.suspicion_timeout(3) == 4.0  # log10(3) < 1
    assert config.suspicion_timeout(100) == 8.0
    assert config.retransmit_limit(5) == 4 and config.retransmit_limit(10) == 8


def test_view_round_trips_through_cli_cluster_encoding() -> None:
    cluster = HStreamGossip_pb2.Cluster(
        members=[
            with_state(A, MemberState.SUSPECT, 17),
            with_state(NodeAddress(3, "127.0.0.3", 6570, "127.0.0.3", 6571), MemberState.DEAD, 4),
        ]
    )
    decoded = decode_view(HStreamGossip_pb2.Cluster.FromString(cluster.SerializeToString()))
    assert decoded == {2: (MemberState.SUSPECT, 17), 3: (MemberState.DEAD, 4)}
    with pytest.raises(ValueError, match="carries no 'gossip-state' listener"):
        decode_view(HStreamGossip_pb2.Cluster(members=[HStreamInternal_pb2.ServerNode(id=5)]))
