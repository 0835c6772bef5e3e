"""Subscriptions and StreamingFetch (protocol §4, errors §6).

Consumers connect to the node LookupSubscription names, as the official clients do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire

from .conftest import append, expect_error, owner_stub, shards_of

EARLIEST = api.SpecialOffset.EARLIEST
LATEST = api.SpecialOffset.LATEST


@pytest.fixture
def consume(hstream) -> Iterator[Callable[[str, str], wire.FetchSession]]:
    sessions: list[wire.FetchSession] = []

    def open_session(sub_id: str, consumer: str = "c1") -> wire.FetchSession:
        session = wire.FetchSession(owner_stub(hstream, sub_id), sub_id, consumer)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.close()


def fill(hstream, stream: str, batches: int, per_batch: int, tag: str = "") -> list[bytes]:
    """Append `batches` batches to each shard; return every payload written."""
    payloads: list[bytes] = []
    for shard in shards_of(hstream, stream):
        for b in range(batches):
            batch = [
                wire.raw_record(f"{tag}{shard.shardId}-{b}-{i}".encode(), key=f"k{i}")
                for i in range(per_batch)
            ]
            append(hstream, stream, shard.shardId, batch)
            payloads.extend(r.payload for r in batch)
    return payloads


REGISTRATION_DEADLINE_S = 20.0  # generous: the node may be slow on a loaded machine


def wait_for_consumers(hstream, sub_id: str, names: set[str]) -> None:
    """Block until the subscription's owner lists every consumer in `names`."""
    owner = owner_stub(hstream, sub_id)
    deadline = time.monotonic() + REGISTRATION_DEADLINE_S
    listed: set[str] = set()
    while time.monotonic() < deadline:
        consumers = owner.ListConsumers(api.ListConsumersRequest(subscriptionId=sub_id))
        listed = {consumer.name for consumer in consumers.consumers}
        if names <= listed:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"consumers {sorted(names)} not listed by ListConsumers({sub_id}) within "
        f"{REGISTRATION_DEADLINE_S} s; listed {sorted(listed)}"
    )


def payloads(got) -> list[bytes]:
    return [record.payload for _, record in got]


def ack_all(session: wire.FetchSession, got) -> None:
    session.ack([record_id for record_id, _ in got])


@pytest.mark.conformance("api.subscriptions.crud")
def test_subscription_crud(hstream, make_stream, subscribe, unique):
    stream = make_stream()
    prefix = unique("crud")
    sub_id = f"{prefix}_a"
    hstream.CreateSubscription(
        api.Subscription(
            subscriptionId=sub_id,
            streamName=stream.streamName,
            ackTimeoutSeconds=7,
            maxUnackedRecords=33,
        )
    )
    owner = owner_stub(hstream, sub_id)
    got = owner.GetSubscription(api.GetSubscriptionRequest(id=sub_id)).subscription
    assert (got.subscriptionId, got.streamName, got.ackTimeoutSeconds, got.maxUnackedRecords) == (
        sub_id,
        stream.streamName,
        7,
        33,
    ), f"GetSubscription gave {got}"
    listed = {
        s.subscriptionId
        for s in hstream.ListSubscriptions(api.ListSubscriptionsRequest()).subscription
    }
    assert sub_id in listed
    prefixed = {
        s.subscriptionId
        for s in hstream.ListSubscriptionsWithPrefix(
            api.ListSubscriptionsWithPrefixRequest(prefix=prefix)
        ).subscription
    }
    assert prefixed == {sub_id}, f"prefix {prefix!r} listed {prefixed}"
    assert hstream.CheckSubscriptionExist(
        api.CheckSubscriptionExistRequest(subscriptionId=sub_id)
    ).exists
    owner.DeleteSubscription(api.DeleteSubscriptionRequest(subscriptionId=sub_id))
    assert not hstream.CheckSubscriptionExist(
        api.CheckSubscriptionExistRequest(subscriptionId=sub_id)
    ).exists


@pytest.mark.conformance("api.errors.subscription-exists")
def test_subscription_exists(hstream, make_stream, subscribe):
    stream = make_stream()
    sub_id = subscribe(stream.streamName)
    expect_error(
        lambda: hstream.CreateSubscription(
            api.Subscription(
                subscriptionId=sub_id,
                streamName=stream.streamName,
                ackTimeoutSeconds=10,
                maxUnackedRecords=10,
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        301,
    )


@pytest.mark.conformance("api.errors.subscription-on-missing-stream")
def test_subscription_on_missing_stream(hstream, unique):
    expect_error(
        lambda: hstream.CreateSubscription(
            api.Subscription(
                subscriptionId=unique("sub"),
                streamName=unique("ghost"),
                ackTimeoutSeconds=10,
                maxUnackedRecords=10,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        302,
    )


@pytest.mark.conformance("api.errors.subscription-not-found")
def test_unknown_subscription(hstream, unique):
    ghost = unique("ghost")
    expect_error(
        lambda: owner_stub(hstream, ghost).GetSubscription(api.GetSubscriptionRequest(id=ghost)),
        grpc.StatusCode.NOT_FOUND,
        300,
    )
    session = wire.FetchSession(hstream, ghost, "c1")
    try:
        assert session.ended.wait(10), "StreamingFetch on an unknown subscription did not end"
        assert session.error is not None, "StreamingFetch on an unknown subscription ended cleanly"
        error = wire.WireError.of(session.error)
        assert (error.status, error.code) == (grpc.StatusCode.NOT_FOUND, 300), str(error)
    finally:
        session.close()


@pytest.mark.conformance("api.subscriptions.earliest")
def test_earliest_delivers_existing(hstream, make_stream, subscribe, consume):
    stream = make_stream(shards=2)
    written = fill(hstream, stream.streamName, batches=3, per_batch=4)
    session = consume(subscribe(stream.streamName))
    got = session.take(len(written), timeout=20)
    ack_all(session, got)
    assert sorted(payloads(got)) == sorted(written), (
        f"EARLIEST: {len(got)} of {len(written)} delivered; "
        f"missing {sorted(set(written) - set(payloads(got)))[:5]}"
    )


@pytest.mark.conformance("api.subscriptions.latest")
def test_latest_only_new(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    old = fill(hstream, stream.streamName, batches=2, per_batch=3, tag="old-")
    session = consume(subscribe(stream.streamName, offset=LATEST))
    new = fill(hstream, stream.streamName, batches=2, per_batch=3, tag="new-")
    got = session.take(len(new) + len(old), timeout=8)
    ack_all(session, got)
    assert sorted(payloads(got)) == sorted(new), (
        f"LATEST delivered {sorted(payloads(got))}, want only {sorted(new)}"
    )


@pytest.mark.conformance("api.subscriptions.record-ids")
def test_one_response_per_batch_with_ids(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    answers = [
        append(
            hstream,
            stream.streamName,
            shard.shardId,
            [wire.raw_record(f"{b}-{i}".encode()) for i in range(b + 1)],
        )
        for b in range(4)
    ]
    session = consume(subscribe(stream.streamName))
    batches = []
    deadline = time.monotonic() + 15
    while len(batches) < 4 and time.monotonic() < deadline:
        try:
            batches.append(session.received.get(timeout=0.5))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
    assert [list(b.recordIds) for b in batches] == [list(a.recordIds) for a in answers], (
        "each stored batch must arrive as one response carrying exactly its append's ids"
    )
    session.ack([i for b in batches for i in b.recordIds])


@pytest.mark.conformance("api.subscriptions.redelivery")
def test_unacked_redelivered_after_timeout(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    written = fill(hstream, stream.streamName, batches=2, per_batch=5)
    session = consume(subscribe(stream.streamName, ack_timeout=2))
    first = session.take(len(written), timeout=15)
    assert len(first) == len(written), f"first delivery {len(first)} of {len(written)}"
    acked = first[::2]
    unacked = first[1::2]
    ack_all(session, acked)
    again = session.take(len(unacked), timeout=15)
    assert sorted(payloads(again)) == sorted(payloads(unacked)), (
        f"after the 2 s ack timeout expected exactly the {len(unacked)} unacked records again; "
        f"got {sorted(payloads(again))}"
    )
    ack_all(session, again)


@pytest.mark.conformance("api.subscriptions.no-redelivery-of-acked")
def test_acked_not_redelivered(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    written = fill(hstream, stream.streamName, batches=3, per_batch=3)
    session = consume(subscribe(stream.streamName, ack_timeout=1))
    got = session.take(len(written), timeout=15)
    ack_all(session, got)
    extra = session.take(1, timeout=4)  # four ack timeouts: any redelivery would show
    assert extra == [], f"acked records delivered again: {payloads(extra)}"
    assert sorted(payloads(got)) == sorted(written)


def take_acking(
    session: wire.FetchSession, want: set[bytes], timeout: float, have: Iterable[bytes] = ()
) -> set[bytes]:
    """Ack every record as it arrives until the payloads seen (with `have`) cover `want` or
    `timeout` seconds pass; return the payloads seen here."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen | set(have) and time.monotonic() < deadline:
        # Short takes: a paused server sends more only once it has the acks.
        got = session.take(len(want), timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        ack_all(session, got)
        seen.update(payloads(got))
    return seen


# The most batches one read may send (real HStreamDB: Core/Subscription.hs:669, checked
# once per read, 562,628-635). §4 says reading pauses while unacked >= maxUnackedRecords;
# a server that reads in chunks pauses between chunks, so a consumer may hold up to one
# read past the limit, and no more.
READ_BATCHES = 100


@pytest.mark.conformance("api.subscriptions.max-unacked")
def test_flow_control(hstream, make_stream, subscribe, consume):
    max_unacked = 4
    # One record per batch, more batches than the limit plus a whole read: delivery that
    # never paused would hand over all of them.
    total = max_unacked + READ_BATCHES + 30
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    for b in range(total):
        append(hstream, stream.streamName, shard.shardId, [wire.raw_record(f"{b}".encode())])
    written = {f"{b}".encode() for b in range(total)}
    session = consume(subscribe(stream.streamName, max_unacked=max_unacked, ack_timeout=60))
    first = session.take(total, timeout=4)
    # A read starts only while unacked < maxUnackedRecords, and sends at most one read.
    most = max_unacked - 1 + READ_BATCHES
    assert max_unacked <= len(first) <= most, (
        f"maxUnackedRecords={max_unacked}: {len(first)} of {total} one-record batches "
        f"delivered before any ack; want at least {max_unacked} (the limit) and at most "
        f"{most} (one read of {READ_BATCHES} batches past it)"
    )
    # Acks make room: delivery resumes until every record has arrived.
    ack_all(session, first)
    rest = take_acking(session, written, timeout=30, have=payloads(first))
    delivered = payloads(first) + sorted(rest)
    assert set(delivered) == written, (
        f"after acking, {len(set(delivered))} of {total} records delivered; missing "
        f"{sorted(written - set(delivered))[:5]}"
    )


ASSIGNMENT_DEADLINE_S = 20.0
# Ack timeout of the reassignment check, and how long past a deadline a resend may take
# (the server's redelivery timer and a loaded machine).
REASSIGN_ACK_TIMEOUT_S = 8
REDELIVERY_SLACK_S = 6.0


@pytest.mark.conformance("api.subscriptions.reassignment")
def test_consumer_leaves_shards_move(hstream, make_stream, subscribe, consume):
    """§4: a departed consumer's shards go to the others, and its in-flight records are
    redelivered there. When is not said; the ack deadline is the latest any server may
    take (real HStreamDB waits for it: Core/Subscription.hs:1171-1219), so the check waits
    until every record c1 could hold is past its deadline."""
    stream = make_stream(shards=4)
    sub_id = subscribe(stream.streamName, ack_timeout=REASSIGN_ACK_TIMEOUT_S)
    first = consume(sub_id, "c1")
    second = consume(sub_id, "c2")
    wait_for_consumers(hstream, sub_id, {"c1", "c2"})
    # Assignment runs every second (§4) and a newcomer takes a shard from the busiest
    # consumer, so c2 owns a shard after a round or two; the evidence of ownership is a
    # delivery, so keep writing rounds until both consumers have received some. c2 acks as
    # it goes; c1 never does, so what it got is in flight when it leaves.
    written: list[bytes] = []
    got_first: list = []
    got_second: set[bytes] = set()
    deadline = time.monotonic() + ASSIGNMENT_DEADLINE_S
    while not (got_first and got_second) and time.monotonic() < deadline:
        written += fill(hstream, stream.streamName, batches=1, per_batch=2, tag=f"r{len(written)}-")
        got_first += first.take(len(written), timeout=1)
        arrived = second.take(len(written), timeout=1)
        ack_all(second, arrived)
        got_second.update(payloads(arrived))
    assert got_first and got_second, (
        f"two consumers on 4 shards for {ASSIGNMENT_DEADLINE_S} s: c1 got {len(got_first)}, "
        f"c2 got {len(got_second)} of {len(written)}"
    )
    first.close()  # leaves without acking
    left_at = time.monotonic()
    # Written after c1 left: on its former shards only a move brings them to c2.
    written += fill(hstream, stream.streamName, batches=1, per_batch=2, tag="after-")
    # Everything c1 was ever sent was sent before it left, so due by then + the ack timeout.
    due = left_at + REASSIGN_ACK_TIMEOUT_S + REDELIVERY_SLACK_S
    rest = take_acking(second, set(written), timeout=due - time.monotonic(), have=got_second)
    delivered = got_second | rest
    in_flight = set(payloads(got_first)) - delivered
    assert delivered == set(written), (
        f"c1 left holding {len(set(payloads(got_first)))} unacked records; by their ack "
        f"deadline ({REASSIGN_ACK_TIMEOUT_S} s) + {REDELIVERY_SLACK_S} s c2 holds "
        f"{len(delivered)} of {len(written)}: lost {sorted(set(written) - delivered)[:5]}"
        f"{' (c1 had them in flight)' if in_flight else ''}"
    )


@pytest.mark.conformance("api.subscriptions.duplicate-consumer")
def test_duplicate_consumer_name(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    sub_id = subscribe(stream.streamName)
    consume(sub_id, "same")
    wait_for_consumers(hstream, sub_id, {"same"})
    duplicate = consume(sub_id, "same")
    assert duplicate.ended.wait(10), "a second consumer named 'same' was accepted"
    assert duplicate.error is not None
    assert duplicate.error.code() == grpc.StatusCode.ALREADY_EXISTS, str(
        wire.WireError.of(duplicate.error)
    )


@pytest.mark.conformance("api.subscriptions.delete-with-consumers")
def test_delete_with_live_consumer(hstream, make_stream, subscribe, consume):
    stream = make_stream()
    sub_id = subscribe(stream.streamName)
    session = consume(sub_id, "c1")
    wait_for_consumers(hstream, sub_id, {"c1"})
    owner = owner_stub(hstream, sub_id)
    expect_error(
        lambda: owner.DeleteSubscription(api.DeleteSubscriptionRequest(subscriptionId=sub_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        305,
    )
    owner.DeleteSubscription(api.DeleteSubscriptionRequest(subscriptionId=sub_id, force=True))
    assert session.ended.wait(10), "forced delete left the consumer's stream open"
    assert not hstream.CheckSubscriptionExist(
        api.CheckSubscriptionExistRequest(subscriptionId=sub_id)
    ).exists


@pytest.mark.conformance("api.subscriptions.per-shard-order")
def test_per_shard_order(hstream, make_stream, subscribe, consume):
    stream = make_stream(shards=3)
    written = fill(hstream, stream.streamName, batches=6, per_batch=2)
    session = consume(subscribe(stream.streamName))
    got = session.take(len(written), timeout=20)
    ack_all(session, got)
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for record_id, _ in got:
        by_shard.setdefault(record_id.shardId, []).append((record_id.batchId, record_id.batchIndex))
    for shard_id, positions in by_shard.items():
        assert positions == sorted(positions), f"shard {shard_id} out of order: {positions}"
