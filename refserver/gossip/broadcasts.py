"""Updates waiting to be piggybacked, each sent a bounded number of times, freshest first.

SWIM disseminates by riding updates on messages that are sent anyway (Ping, Ack, PingReq,
gossip). An update about a member supersedes any older one about the same member, so a
refutation never travels behind the suspicion it answers. The least-sent updates go
first and, among those, the newest: a fresh update reaches O(log n) members quickly.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass

from harness.protos import HStreamGossip_pb2

# Bounds the size of one Ping/Ack; the rest wait for the next message.
MAX_PIGGYBACK = 32


@dataclass
class _Pending:
    message: HStreamGossip_pb2.Message
    sent: int
    seq: int


class BroadcastQueue:
    def __init__(self) -> None:
        self._pending: dict[Hashable, _Pending] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._pending)

    def queue(self, key: Hashable, message: HStreamGossip_pb2.Message) -> None:
        """Queue `message`, replacing whatever was queued under the same key."""
        self._pending[key] = _Pending(message, 0, next(self._seq))

    def take(self, limit: int, budget: int = MAX_PIGGYBACK) -> list[HStreamGossip_pb2.Message]:
        """Up to `budget` messages for one outgoing call; each counts as sent once, and is
        dropped after `limit` sends."""
        chosen = sorted(self._pending.items(), key=lambda kv: (kv[1].sent, -kv[1].seq))[:budget]
        messages = []
        for key, pending in chosen:
            messages.append(pending.message)
            pending.sent += 1
            if pending.sent >= limit:
                del self._pending[key]
        return messages
