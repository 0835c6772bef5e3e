"""Disk faults on the store: the store's data directory is a lazy disk (harness.lazydisk).

* `crash-lose-unsynced`: kill -9 the store, drop every write it did not fsync (a power loss:
  the page cache is gone), restart it on what is left. Recorded as three ops (kill,
  lose-unsynced, start) so the history holds each step. A plain `kill-store` keeps the page
  cache, so only this fault tells a store that fsyncs from one that only writes.
* `disk-latency`: every read, write or fsync of the store waits `<op>_ms` more, until stopped.
* `disk-errno`: the chosen ops (`write`, `fsync`, `read`, ... set to 1) fail with `errno`
  (5 EIO, 28 ENOSPC) on every call, on the next `count` calls, or with `percent` chance.

Needs the store (ours) on a lazy disk: a cluster started with `disk_faults=True` on the
local backend where FUSE is, or on docker where the host has /dev/fuse (the store then runs
in the disk's container, harness.runtimes.docker_colocated); `Cluster.refusal("disk")` says
what is missing. Servers stay
members meanwhile: no node is down. Teardown clears every IO fault and restarts a store a
failed crash left dead.

Each completion carries the disk's own word (`take_evidence`) under ``"disk"``: what a
lose-unsynced dropped (``lost``: files, dirty bytes), and after an IO fault starts or stops
the faults the disk has in force and its per-op counts of failed calls and added delay.
"""

from __future__ import annotations

import errno as errno_module
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness.lazydisk.fs import FAULT_OPS
from harness.nemesis.base import Context, Family, NemesisError, Undo

if TYPE_CHECKING:
    from harness.nemesis.faults import FaultInstance

LATENCY_KEYS = tuple(f"{op}_ms" for op in FAULT_OPS)
ERRNO_KEYS = ("errno", "count", "percent", *FAULT_OPS)


def check_disk_fault(kind: str, attributes: Mapping[str, int]) -> dict[str, int]:
    """The attributes of a disk fault, checked (NemesisError naming what is wrong)."""
    attrs = dict(attributes)
    allowed: tuple[str, ...] = ()
    if kind == "disk-latency":
        allowed = LATENCY_KEYS
        if not any(attrs.get(k) for k in LATENCY_KEYS):
            raise NemesisError(f"disk-latency needs a delay: one of {', '.join(LATENCY_KEYS)} > 0")
    elif kind == "disk-errno":
        allowed = ERRNO_KEYS
        attrs.setdefault("errno", errno_module.EIO)
        attrs.setdefault("count", 0)
        attrs.setdefault("percent", 100)
        if attrs["errno"] not in errno_module.errorcode:
            raise NemesisError(f"disk-errno: {attrs['errno']} is not an errno number (EIO is 5)")
        if not any(attrs.get(op) for op in FAULT_OPS):
            raise NemesisError(f"disk-errno needs an op set to 1: one of {', '.join(FAULT_OPS)}")
        if attrs["count"] < 0 or not 0 < attrs["percent"] <= 100:
            raise NemesisError("disk-errno: count must be >= 0 and percent within 1..100")
    unknown = sorted(set(attrs) - set(allowed))
    if unknown:
        raise NemesisError(f"{kind} takes no {', '.join(unknown)}; it takes: "
                           f"{', '.join(allowed) or 'nothing'}")
    if any(not isinstance(v, int) or v < 0 for v in attrs.values()):
        raise NemesisError(f"{kind}: attributes are non-negative integers, got {attrs}")
    return attrs


def errno_fault_name(attributes: Mapping[str, int]) -> str:
    """disk-eio, disk-enospc, ...: the errno a disk-errno fault returns names it."""
    code = attributes.get("errno", errno_module.EIO)
    return f"disk-{errno_module.errorcode.get(code, str(code)).lower()}"


class Disk(Family):
    name = "disk"
    needs = ("store", "disk")
    kinds = ("crash-lose-unsynced", "disk-latency", "disk-errno")

    def __init__(self) -> None:
        self.killed = False
        self.io_faults = False
        self.evidence: dict[str, Any] = {}

    def phases(self, instance: FaultInstance, action: str) -> tuple[str, ...]:
        if instance.fault.kind == "crash-lose-unsynced" and action == "start":
            return ("kill", "lose-unsynced", "start")
        return (action,)

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        kind = instance.fault.kind
        attrs = instance.fault.attributes
        cluster = ctx.cluster
        if kind == "crash-lose-unsynced":
            if action == "kill":
                cluster.kill_store()
                self.killed = True
            elif action == "lose-unsynced":
                lost = cluster.disk_control().lose_unsynced()
                self.evidence = {"disk": {"lost": lost}}
                cluster.progress(f"crash-lose-unsynced: the store's unsynced writes are gone "
                                 f"({lost['files']} files, {lost['dirty_bytes']} dirty bytes)")
            elif action == "start" and self.killed:
                cluster.restart_store()
                self.killed = False
            return set(), set()
        control = cluster.disk_control()
        on = action == "start"
        if kind == "disk-latency":
            for op in FAULT_OPS:
                if attrs.get(f"{op}_ms"):
                    control.set_fault(op, latency_ms=attrs[f"{op}_ms"] if on else 0)
        else:
            for op in FAULT_OPS:
                if attrs.get(op):
                    control.set_fault(
                        op, errno=attrs["errno"] if on else 0, count=attrs["count"],
                        probability=attrs["percent"] / 100, seed=cluster.spec.seed)
        self.io_faults = on or self.io_faults
        self.evidence = {"disk": _io_truth(control.status())}
        return set(), set()

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        if self.io_faults:
            def clear() -> None:
                control = ctx.cluster.disk_control()
                control.clear()
                self.evidence = {"disk": _io_truth(control.status())}

            undo.attempt("clear the disk's IO faults", clear)
            self.io_faults = False
        if self.killed:
            undo.attempt("restart the store", ctx.cluster.restart_store)
            self.killed = False
        undo.done()

    def take_evidence(self) -> dict[str, Any]:
        evidence, self.evidence = self.evidence, {}
        return evidence


def _io_truth(status: dict[str, Any]) -> dict[str, Any]:
    """The faults in force on the disk and what they did so far, as the disk reports it."""
    in_force = {op: {k: v for k, v in fault.items() if v}
                for op, fault in status["faults"].items()
                if fault.get("latency_ms") or fault.get("errno")}
    return {"faults": in_force, "failed": status["failed"], "delayed_ms": status["delayed_ms"]}
