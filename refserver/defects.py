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
