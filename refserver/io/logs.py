"""A connector's log on this node: runtime events and the connector's own output.

HStreamDB's GetConnectorLogs returns lines `begin .. begin+count` of the task's log file;
the reference server keeps the last `capacity` lines in memory and numbers them from the
start of the task's life on this node, so `begin` stays meaningful while lines roll off.
"""

from __future__ import annotations

import time
from collections import deque


class TaskLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self._lines: deque[str] = deque(maxlen=capacity)
        self._dropped = 0

    def add(self, line: str) -> None:
        if len(self._lines) == self._lines.maxlen:
            self._dropped += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self._lines.append(f"{stamp} {line}")

    def lines(self, begin: int = 0, count: int = 0) -> list[str]:
        """Lines numbered from 0; `count` <= 0 means all the rest."""
        start = max(begin - self._dropped, 0)
        kept = list(self._lines)[start:]
        return kept[:count] if count > 0 else kept

    def text(self, begin: int = 0, count: int = 0) -> str:
        return "".join(line + "\n" for line in self.lines(begin, count))
