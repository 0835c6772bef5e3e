"""Process faults as data: kill, pause, resume, restart a node; kill or restart the store.

A nemesis records a `ProcessFault` in the history and applies it through the Cluster
handle, so the same fault runs on any backend (the local backend signals process groups,
the docker backend signals containers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness import HarnessError

if TYPE_CHECKING:
    from harness.cluster import Cluster

ProcessFaultKind = Literal["kill", "pause", "resume", "restart", "kill-store", "restart-store"]
NODE_FAULTS = ("kill", "pause", "resume", "restart")
STORE_FAULTS = ("kill-store", "restart-store")


@dataclass(frozen=True)
class ProcessFault:
    kind: ProcessFaultKind
    node: int | None = None  # HServer id; None for store faults

    def __post_init__(self) -> None:
        if self.kind in NODE_FAULTS and self.node is None:
            raise HarnessError(f"process fault {self.kind!r} needs a node id")
        if self.kind in STORE_FAULTS and self.node is not None:
            raise HarnessError(f"process fault {self.kind!r} takes no node id")
        if self.kind not in NODE_FAULTS + STORE_FAULTS:
            known = ", ".join(NODE_FAULTS + STORE_FAULTS)
            raise HarnessError(f"unknown process fault {self.kind!r}; known: {known}")

    def apply(self, cluster: Cluster) -> None:
        if self.kind == "kill-store":
            cluster.kill_store()
        elif self.kind == "restart-store":
            cluster.restart_store()
        else:
            assert self.node is not None
            getattr(cluster, self.kind)(self.node)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "node": self.node}
