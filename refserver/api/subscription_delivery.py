"""Delivery state of one subscription on the node that serves it.

Holds the live consumers, which shard each one reads, the records sent and not yet
acked (with their ack deadlines), and each shard's acked prefix. Everything here can be
rebuilt from the store (subscription start lsns + checkpoints); what is lost on a restart
is only which records beyond the checkpoint were acked, so those are sent again
(at-least-once, as in HStreamDB).

All methods run on the server's event loop; only the reader task awaits the store
between reading a shard's position and advancing it, and it re-checks ownership after.

Profile hstream-0.20 (Core/Subscription.hs) differs in two places: maxUnackedRecords is
checked once before each read and the whole read (up to 100 batches over the shards) is
sent, so a consumer can hold up to 100 batches beyond the limit (562,628-635,669); and a
departed consumer's in-flight records stay due at their ack deadline, not at once
(1171-1219: its shards are only unbound).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors, records
from refserver.api.subscription_assignment import assign
from refserver.api.subscription_progress import Position, ShardProgress
from refserver.api.subscription_storage import CheckpointStore, SubscriptionRecord
from refserver.errors import HStreamError
from refserver.profiles import PROTOCOL, Profile
from refserver.protos import Store_pb2, Store_pb2_grpc

log = logging.getLogger(__name__)

# Batches asked of the store per read; flow control is checked before each one is sent
# (profile hstream-0.20: Profile.subscription_read_batches, checked once per read).
READ_BATCHES = 16
# How often an idle reader looks for new entries; the store has no tail notification.
POLL_SECONDS = 0.1
# HStreamDB has no documented code for a duplicate consumer name; the status is what
# clients check.
CONSUMER_EXISTS = 0


@dataclass
class Consumer:
    """One StreamingFetch call: a named member of the subscription's consumer group."""

    name: str
    uri: str
    user_agent: str
    outbox: asyncio.Queue[api.StreamingFetchResponse | None] = field(default_factory=asyncio.Queue)
    ended: bool = False

    def send(self, response: api.StreamingFetchResponse) -> None:
        if not self.ended:
            self.outbox.put_nowait(response)

    def end(self) -> None:
        """Make the consumer's response stream finish after what is already queued."""
        if not self.ended:
            self.ended = True
            self.outbox.put_nowait(None)


@dataclass
class _Pending:
    deadline: float
    consumer: str
    # Only with the redeliver-acked defect: acked, but its deadline was left armed.
    acked: bool = False


@dataclass
class _InFlightBatch:
    batch: api.BatchedRecord
    pending: dict[int, _Pending]
    decoded: list[api.HStreamRecord] | None = None

    def records(self) -> list[api.HStreamRecord]:
        if self.decoded is None:
            self.decoded = records.decode(self.batch)
        return self.decoded


@dataclass
class _Shard:
    shard_id: int
    next_lsn: int
    # A resume from a checkpoint inside batch `next_lsn` skips its first records.
    resume_index: int
    progress: ShardProgress
    saved: Position
    owner: str | None = None
    inflight: dict[int, _InFlightBatch] = field(default_factory=dict)


class SubscriptionDelivery:
    def __init__(
        self,
        subscription: SubscriptionRecord,
        checkpoints: dict[int, Position],
        store: Store_pb2_grpc.StoreStub,
        checkpoint_store: CheckpointStore,
        defects: frozenset[str],
        profile: Profile = PROTOCOL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subscription = subscription
        self._profile = profile
        self._store = store
        self._checkpoint_store = checkpoint_store
        self._defects = defects
        # Ack deadlines are measured on a monotonic clock, which no change of the wall clock
        # moves. The wall-clock-deadlines defect measures them on the wall clock instead: a
        # forward jump makes every in-flight record due at once, a backward one stalls them.
        self._clock = time.time if "wall-clock-deadlines" in defects else clock
        self.consumers: dict[str, Consumer] = {}
        self.unacked = 0
        self.closed = False
        # No pending record is due before this: lets the 100 ms redelivery tick skip the
        # scan of every in-flight record (up to maxUnackedRecords) when nothing can be due.
        self._next_deadline = float("inf")
        self._shards: dict[int, _Shard] = {}
        for shard_id, start_lsn in sorted(subscription.start_lsns.items()):
            position = max(
                checkpoints.get(shard_id, Position(start_lsn, 0)), Position(start_lsn, 0)
            )
            self._shards[shard_id] = _Shard(
                shard_id=shard_id,
                next_lsn=position.lsn,
                resume_index=position.index,
                progress=ShardProgress(position),
                saved=position,
            )
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"read {subscription.subscription_id}"),
            asyncio.create_task(
                self._checkpoint_loop(), name=f"checkpoint {subscription.subscription_id}"
            ),
        ]

    @property
    def subscription_id(self) -> str:
        return self.subscription.subscription_id

    def checkpoints(self) -> dict[int, Position]:
        return {shard.shard_id: shard.progress.checkpoint for shard in self._shards.values()}

    # Consumers -------------------------------------------------------------------------

    def join(self, name: str, uri: str, user_agent: str) -> Consumer:
        if self.closed:
            raise HStreamError(
                grpc.StatusCode.NOT_FOUND,
                errors.SUBSCRIPTION_NOT_FOUND,
                f"subscription {self.subscription_id!r} is being deleted",
            )
        if name in self.consumers:
            raise HStreamError(
                grpc.StatusCode.ALREADY_EXISTS,
                CONSUMER_EXISTS,
                f"consumer {name!r} is already reading subscription "
                f"{self.subscription_id!r}; use a different consumer name",
            )
        consumer = Consumer(name=name, uri=uri, user_agent=user_agent)
        self.consumers[name] = consumer
        self.rebalance()
        return consumer

    def leave(self, consumer: Consumer) -> None:
        """Forget a consumer; its shards go to others and its in-flight records are due."""
        if self.consumers.get(consumer.name) is not consumer:
            return
        del self.consumers[consumer.name]
        consumer.end()
        for shard in self._shards.values():
            if shard.owner == consumer.name:
                shard.owner = None
            if "no-redelivery" in self._defects or self._profile.inflight_waits_for_deadline:
                continue
            for batch in shard.inflight.values():
                for pending in batch.pending.values():
                    if pending.consumer == consumer.name:
                        pending.deadline = 0.0
                        self._next_deadline = 0.0
        self.rebalance()

    def rebalance(self) -> None:
        """One assignment round (§4)."""
        current = {s.shard_id: s.owner for s in self._shards.values() if s.owner is not None}
        new = assign(sorted(self._shards), current, list(self.consumers))
        for shard in self._shards.values():
            shard.owner = new.get(shard.shard_id)
        self._wake.set()

    # Acks and redelivery ---------------------------------------------------------------

    def ack(self, record_ids: Iterable[api.RecordId]) -> int:
        """Apply acks from any consumer; returns how many records were newly acked."""
        newly = 0
        keep_armed = "redeliver-acked" in self._defects
        for record_id in record_ids:
            shard = self._shards.get(record_id.shardId)
            if shard is None or not shard.progress.ack(record_id.batchId, record_id.batchIndex):
                continue
            newly += 1
            batch = shard.inflight.get(record_id.batchId)
            pending = batch.pending.get(record_id.batchIndex) if batch else None
            if batch is None or pending is None or pending.acked:
                continue
            self.unacked -= 1
            if keep_armed:
                pending.acked = True
            else:
                del batch.pending[record_id.batchIndex]
                if not batch.pending:
                    del shard.inflight[record_id.batchId]
        if newly:
            self._dirty.set()
            self._wake.set()
        return newly

    def redeliver_expired(self) -> int:
        """Resend every record whose ack deadline passed; returns how many were resent."""
        if "no-redelivery" in self._defects or self.closed:
            return 0
        now = self._clock()
        if now < self._next_deadline:
            return 0
        resent = 0
        next_deadline = float("inf")
        for shard in self._shards.values():
            consumer = self.consumers.get(shard.owner) if shard.owner else None
            for lsn, batch in list(shard.inflight.items()):
                due = sorted(i for i, p in batch.pending.items() if p.deadline <= now)
                later = [p.deadline for p in batch.pending.values() if p.deadline > now]
                next_deadline = min([next_deadline, *later])
                if not due:
                    continue
                if consumer is None:
                    # Due, but the shard waits for an owner: look again next tick.
                    next_deadline = now
                    continue
                consumer.send(self._response(shard.shard_id, lsn, batch, due))
                resent += len(due)
                for index in due:
                    if batch.pending[index].acked:
                        del batch.pending[index]
                    else:
                        batch.pending[index] = _Pending(
                            now + self.subscription.ack_timeout_seconds, consumer.name
                        )
                    next_deadline = min(next_deadline, now + self.subscription.ack_timeout_seconds)
                if not batch.pending:
                    del shard.inflight[lsn]
        self._next_deadline = next_deadline
        return resent

    def _response(
        self, shard_id: int, lsn: int, batch: _InFlightBatch, indices: list[int]
    ) -> api.StreamingFetchResponse:
        if indices == list(range(batch.batch.batchSize)):
            out = batch.batch
        else:
            # A partial batch is rebuilt with only the chosen records so that the ids
            # and the records match one to one (the Python client checks the count).
            decoded = batch.records()
            out = records.encode([decoded[i] for i in indices], batch.batch.compressionType)
            out.publishTime.CopyFrom(batch.batch.publishTime)
        if "renumber-resent" in self._defects:  # the defect: ids by place, not by index
            indices = list(range(len(indices)))
        return api.StreamingFetchResponse(
            receivedRecords=api.ReceivedRecord(
                recordIds=[
                    api.RecordId(shardId=shard_id, batchId=lsn, batchIndex=i) for i in indices
                ],
                record=out,
            )
        )

    # Reading ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self.closed:
            try:
                progressed = await self._read_round()
            except grpc.RpcError as error:
                log.warning("subscription %s: store read failed: %s", self.subscription_id, error)
                progressed = False
            if progressed:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass

    async def _read_round(self) -> bool:
        if self._profile.unacked_checked_per_read:
            return await self._read_whole()
        progressed = False
        for shard in list(self._shards.values()):
            if self.closed or self.unacked >= self.subscription.max_unacked_records:
                return progressed
            if shard.owner is None:
                continue
            reply = await self._store.Read(
                Store_pb2.ReadReq(
                    log_id=shard.shard_id, from_lsn=shard.next_lsn, max_entries=READ_BATCHES
                )
            )
            for entry in reply.entries:
                if self.closed or self.unacked >= self.subscription.max_unacked_records:
                    if "skip-held-back" in self._defects and reply.entries:
                        # The defect: the read position already counts the batches that
                        # flow control holds back, so the next read starts after them.
                        shard.next_lsn = max(shard.next_lsn, reply.entries[-1].lsn + 1)
                    return progressed
                consumer = self.consumers.get(shard.owner) if shard.owner else None
                if consumer is None:
                    break
                if entry.lsn < shard.next_lsn:
                    continue
                self._deliver(shard, entry, consumer)
                progressed = True
        return progressed

    async def _read_whole(self) -> bool:
        """Profile hstream-0.20: check the unacked count once, then read up to
        subscription_read_batches batches over the assigned shards and send them all."""
        if self.closed or self.unacked >= self.subscription.max_unacked_records:
            return False
        budget = self._profile.subscription_read_batches
        progressed = False
        for shard in list(self._shards.values()):
            if self.closed or budget <= 0:
                break
            if shard.owner is None:
                continue
            request = Store_pb2.ReadReq(
                log_id=shard.shard_id, from_lsn=shard.next_lsn, max_entries=budget
            )
            reply = await self._store.Read(request)
            for entry in reply.entries:
                consumer = self.consumers.get(shard.owner) if shard.owner else None
                if self.closed or consumer is None:
                    break
                if entry.lsn < shard.next_lsn:
                    continue
                self._deliver(shard, entry, consumer)
                budget -= 1
                progressed = True
        return progressed

    def _deliver(self, shard: _Shard, entry: Store_pb2.Entry, consumer: Consumer) -> None:
        first = shard.resume_index if entry.lsn == shard.next_lsn else 0
        shard.next_lsn = entry.lsn + 1
        shard.resume_index = 0
        batch = api.BatchedRecord()
        try:
            batch.ParseFromString(entry.payload)
        except DecodeError:
            log.error("shard %d lsn %d is not a BatchedRecord; skipped", shard.shard_id, entry.lsn)
            return
        if batch.batchSize <= first:
            return
        # On every read path the publish time is the store's append time (§1).
        batch.publishTime.FromMilliseconds(entry.timestamp_ms)
        deadline = self._clock() + self.subscription.ack_timeout_seconds
        self._next_deadline = min(self._next_deadline, deadline)
        inflight = _InFlightBatch(
            batch=batch,
            pending={i: _Pending(deadline, consumer.name) for i in range(first, batch.batchSize)},
        )
        shard.progress.delivered(entry.lsn, batch.batchSize, first)
        shard.inflight[entry.lsn] = inflight
        self.unacked += batch.batchSize - first
        consumer.send(
            self._response(shard.shard_id, entry.lsn, inflight, list(range(first, batch.batchSize)))
        )
        if "checkpoint-on-send" in self._defects:
            self._dirty.set()  # the defect saves what was sent: a send moves the checkpoint

    # Checkpoints -----------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while not self.closed:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.save_checkpoints()
            except grpc.RpcError as error:
                log.warning(
                    "subscription %s: checkpoint write failed: %s", self.subscription_id, error
                )
                self._dirty.set()
                await asyncio.sleep(POLL_SECONDS)

    async def save_checkpoints(self) -> None:
        for shard in list(self._shards.values()):
            position = shard.progress.checkpoint
            if "checkpoint-on-send" in self._defects:
                # The defect: past every record sent, acked or not. This node still resends
                # its unacked records from memory; a node taking the subscription over after
                # this one died starts here and never sends them again.
                position = max(position, Position(shard.next_lsn, shard.resume_index))
            if position > shard.saved:
                await self._checkpoint_store.save(self.subscription_id, shard.shard_id, position)
                shard.saved = max(shard.saved, position)

    # Lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """End every consumer's stream, stop reading, and persist the checkpoints."""
        if self.closed:
            return
        self.closed = True
        for consumer in list(self.consumers.values()):
            consumer.end()
        self.consumers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.save_checkpoints()
        except grpc.RpcError as error:
            log.warning("subscription %s: final checkpoint lost: %s", self.subscription_id, error)
