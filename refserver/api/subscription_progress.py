"""Acknowledgement progress of one shard of a subscription: the contiguous acked prefix.

A checkpoint is a `Position` (lsn, index): every record strictly before it is acked, and
delivery after a restart starts at it. Acks arrive out of order, so the records acked
beyond the prefix are remembered until the gap before them closes. Store lsns of one log
increase but need not be consecutive (trimmed or skipped entries), hence a checkpoint
that has passed a whole batch is `(lsn + 1, 0)`: a store Read from lsn + 1 returns the
next entry whatever its lsn.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Position:
    lsn: int
    index: int

    def to_json(self) -> dict[str, int]:
        return {"lsn": self.lsn, "index": self.index}

    @staticmethod
    def from_json(value: Any) -> Position:
        return Position(int(value["lsn"]), int(value["index"]))


@dataclass
class _Batch:
    size: int
    # Indices below `first` were acked before this batch was delivered again (a resume
    # from a checkpoint inside the batch).
    first: int
    acked: set[int] = field(default_factory=set)

    def prefix_end(self) -> int:
        """First index of this batch not yet acked."""
        index = self.first
        while index in self.acked:
            index += 1
        return index


class OutOfOrderDelivery(ValueError):
    pass


class ShardProgress:
    """Delivered batches of one shard in lsn order, their acks, and the checkpoint."""

    def __init__(self, start: Position) -> None:
        self._checkpoint = start
        self._batches: OrderedDict[int, _Batch] = OrderedDict()

    @property
    def checkpoint(self) -> Position:
        return self._checkpoint

    def delivered(self, lsn: int, size: int, first_index: int = 0) -> None:
        """Record that batch `lsn` (records first_index..size-1) went out for the first time."""
        last = next(reversed(self._batches), None)
        if lsn < self._checkpoint.lsn or (last is not None and lsn <= last):
            raise OutOfOrderDelivery(
                f"batch {lsn} delivered after batch {last} / checkpoint {self._checkpoint}"
            )
        if size <= 0 or not 0 <= first_index < size:
            raise ValueError(f"batch {lsn}: bad size {size} or first index {first_index}")
        self._batches[lsn] = _Batch(size=size, first=first_index)
        self._advance()

    def ack(self, lsn: int, index: int) -> bool:
        """Mark one record acked; False when it is unknown or was already acked."""
        batch = self._batches.get(lsn)
        if batch is None or not batch.first <= index < batch.size or index in batch.acked:
            return False
        batch.acked.add(index)
        self._advance()
        return True

    def is_acked(self, lsn: int, index: int) -> bool:
        if Position(lsn, index) < self._checkpoint:
            return True
        batch = self._batches.get(lsn)
        return batch is not None and (index < batch.first or index in batch.acked)

    def _advance(self) -> None:
        while self._batches:
            lsn, batch = next(iter(self._batches.items()))
            end = batch.prefix_end()
            if end < batch.size:
                self._checkpoint = Position(lsn, end)
                return
            del self._batches[lsn]
            self._checkpoint = Position(lsn + 1, 0)
