"""Seeded defects: switchable bugs that prove the harness's checkers catch real faults.

Each is off unless named with `--defect NAME` (repeatable). The text says which property
it breaks, so a suite that fails with it on can say what it caught.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFECTS: dict[str, str] = {
    "ack-before-durable": (
        "Append is acknowledged before the store has made the record durable; a store "
        "crash loses acknowledged records (breaks: no acknowledged record is lost)."
    ),
    "fsync-lie": (
        "The store acknowledges appends once they are written, before they are on disk: it "
        "commits them with SQLite's synchronous=OFF, so they are not fsynced (metadata "
        "still is). A kill -9 of the store loses nothing (the data is in the page cache), a "
        "power loss loses acknowledged records (breaks: no acknowledged record is lost; only "
        "the disk family's crash-lose-unsynced reveals it)."
    ),
    "never-confirm": (
        "Suspected members are never confirmed dead; a killed node stays in every view "
        "(breaks: membership converges after a failure)."
    ),
    "no-refute": (
        "A node that hears it is suspected does not broadcast Alive(incarnation+1); a "
        "falsely suspected node is confirmed dead (breaks: no false confirmation of a "
        "live node, recovery after a pause)."
    ),
    "no-new-members": (
        "Gossip about a member a node has never heard of is dropped: members are learnt "
        "only at bootstrap and from a join's answer, so a node that joins a running cluster "
        "later stays unknown to the members already there (breaks: a new node joins and "
        "every view converges)."
    ),
    "stale-owner": (
        "Lookups hash over the configured seed set instead of the alive members, so "
        "resources stay owned by dead nodes (breaks: lookups move off dead owners)."
    ),
    "redeliver-acked": (
        "StreamingFetch resends records that were already acknowledged (breaks: acked "
        "records are not redelivered to a live consumer)."
    ),
    "no-redelivery": (
        "Unacknowledged records are never resent after their ack deadline (breaks: "
        "unacked records are redelivered)."
    ),
    "reorder-reads": (
        "Read paths return the batches of a read window in reverse order (breaks: "
        "per-shard order)."
    ),
    "lost-checkpoint": (
        "Subscription checkpoints are kept only in server memory; after a server restart "
        "consumers start from the subscription's initial offset again (breaks: resume "
        "from the checkpoint, acked records not redelivered)."
    ),
    "renumber-resent": (
        "A batch resent in part (its records still unacknowledged at their ack deadline, or "
        "a resume from a checkpoint inside it) numbers its record ids 0, 1, ... by their "
        "place in the rebuilt batch instead of keeping each record's own batch index, so "
        "one record id names two different records (breaks: a record id always names the "
        "same record -- the queue checker's inconsistent offsets)."
    ),
    "skip-held-back": (
        "The subscription's reader moves a shard's read position past every batch a store "
        "read returned before sending them; when flow control (maxUnackedRecords) stops the "
        "sending midway, the batches it held back are never delivered to any consumer, "
        "though every reader of the shard sees them (breaks: a consumer is delivered every "
        "record of the shards it owns, in order -- the queue checker's poll skip)."
    ),
    "ack-on-sequence": (
        "The store answers an append as soon as its sequencer has given the entry an LSN "
        "and commits it with the next periodic group commit (readers see it only then); a "
        "restarted store begins a new epoch of LSNs instead of reusing numbers, as a log "
        "store's sequencer does. A kill -9 of the store loses the acknowledged appends not "
        "committed yet, while the records appended after the restart are read past the gap "
        "(breaks: no acknowledged record is lost -- the queue checker's lost)."
    ),
    "wall-clock-deadlines": (
        "Subscription ack deadlines are measured on the wall clock (time.time) instead of a "
        "monotonic clock, so a forward jump of the server's clock makes every unacked "
        "record in flight due at once (mass early redelivery) and a backward jump stalls "
        "redelivery (breaks: no record is redelivered before its ack deadline; only the "
        "clock faults reveal it)."
    ),
    "checkpoint-on-send": (
        "The subscription's owner saves its checkpoint past every record it has sent, acked "
        "or not. While it lives it still resends unacked records from memory, so only a node "
        "taking the subscription over from a dead owner starts past records that were "
        "delivered and never acknowledged (breaks: unacked records are redelivered, after "
        "the subscription owner is killed mid-flight)."
    ),
    "starved-probes": (
        "The prober takes its own timeout for the member's death: a Ping not answered "
        "within the round-trip timeout on the prober's clock confirms the member dead at "
        "once, with no PingReq through other members and no suspicion to refute. A node "
        "starved of CPU handles answers late and answers late: it times out Pings its peers "
        "answered in time, and they time out its own, and each declares a live member dead "
        "(breaks: no live member is confirmed dead; a killed or paused peer is really gone, "
        "so only CPU starvation reveals it)."
    ),
    "leave-tombstone": (
        "A member that announced a graceful leave is remembered as gone for good: every "
        "later Alive about it is dropped, whatever its incarnation, so a node stopped "
        "gracefully and started again (a rolling restart) never comes back into the views "
        "of the members that heard it leave (breaks: a restarted node rejoins and every "
        "view converges; a kill -9 restart sends no leave and is unaffected)."
    ),
    "io-checkpoint-before-append": (
        "A source connector's task stores each STATE as its checkpoint before it has "
        "appended the records that STATE covers (they follow a slice later), so the "
        "checkpoint runs ahead of what is durable in the stream and a crash loses records "
        "(breaks: a source checkpoint covers only records already in the stream)."
    ),
}


class UnknownDefect(ValueError):
    pass


def parse_defects(names: Iterable[str]) -> frozenset[str]:
    """Validate defect names; the error lists the known ones."""
    chosen = frozenset(names)
    unknown = sorted(chosen - DEFECTS.keys())
    if unknown:
        raise UnknownDefect(
            f"unknown defect {', '.join(unknown)}; known defects: {', '.join(sorted(DEFECTS))}"
        )
    return chosen
