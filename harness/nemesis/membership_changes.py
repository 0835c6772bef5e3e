"""Membership changes: a graceful leave and a rolling restart (a new node's join is the
`join` family's: `FAULTS["join"]` starts the next late node).

* ``leave``: SIGTERM the node, as an operator stops a server (`Cluster.stop_node`). The
  reference server announces its departure first (refserver.gossip GossipNode.leave: a
  Confirm of itself, the wire format's only goodbye); real HStreamDB v0.20 has no SIGTERM
  handler and just ends, so its peers find out by probing. Either way it is gone from every
  view; the truth has it down from the moment it is signalled (its goodbye may reach the
  peers before it has exited). Its stop starts it again and waits until it is ready and
  back in every view.
* ``rolling-restart``: every node of the instance in turn, one at a time: graceful stop,
  start, wait until it is ready (the start returns then) and rejoined (every running node's
  view has it alive and its own view has every running node alive), each wait with a named
  deadline, before the next node. Each step is its own recorded phase (``stop:<n>``,
  ``exited:<n>``, ``start:<n>``, ``rejoined:<n>``), so the history holds who is a member
  when.

Teardown starts every node this family stopped and has not started again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from harness.nemesis.base import Context, Family, NemesisError, Undo
from harness.nemesis.faults import CHANGE_KINDS, FaultInstance

if TYPE_CHECKING:
    from harness.cluster import Cluster

# How long a restarted node may take to be alive in every view and see every running node
# alive: a join's spread by gossip is a few gossip rounds (suites/membership/bounds.py's join
# bound, about 2 s at the suites' timings, 10 s at HStreamDB's defaults); this leaves room
# for a loaded machine. An attribute ``rejoin_deadline_s`` overrides it per fault.
REJOIN_DEADLINE_S = 30.0
REJOIN_POLL_S = 0.1


class MembershipChanges(Family):
    name = "membership-changes"
    needs = ("signal",)
    kinds = CHANGE_KINDS

    def __init__(self) -> None:
        self.stopped: set[int] = set()  # stopped by us and not started again

    def phases(self, instance: FaultInstance, action: str) -> tuple[str, ...]:
        nodes = instance.nodes
        if instance.fault.kind == "leave":
            if action == "start":
                return tuple(p for n in nodes for p in (f"stop:{n}", f"exited:{n}"))
            return tuple(p for n in nodes for p in (f"start:{n}", f"rejoined:{n}"))
        if action == "start":
            return tuple(p for n in nodes
                         for p in (f"stop:{n}", f"exited:{n}", f"start:{n}", f"rejoined:{n}"))
        return (action,)  # a rolling restart is over once its last node rejoined

    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        step, _, node = action.partition(":")
        if not node:
            return set(), set()
        n = int(node)
        cluster = ctx.cluster
        if step == "stop":
            # Down from the signal on: a leaving server tells its peers at once, before it
            # has exited, and their views may drop it from then.
            cluster.stop_node(n, wait=False)
            self.stopped.add(n)
            return {n}, set()
        if step == "exited":
            cluster.wait_stopped(n)
            return set(), set()
        if step == "start":
            if n not in self.stopped:
                return set(), set()  # started again already (a heal came first)
            cluster.restart(n)
            self.stopped.discard(n)
            return set(), {n}
        if step == "rejoined":
            deadline = float(instance.fault.attributes.get("rejoin_deadline_s",
                                                           REJOIN_DEADLINE_S))
            wait_rejoined(cluster, n, deadline)
            return set(), set()
        raise NemesisError(f"{instance.name}: unknown phase {action!r}")

    def teardown(self, ctx: Context) -> None:
        undo = Undo(self.name)
        for n in sorted(self.stopped):
            undo.attempt(f"start node {n} again", ctx.cluster.restart, n)
        self.stopped.clear()
        undo.done()

    def held_down(self) -> set[int]:
        return set(self.stopped)


def wait_rejoined(cluster: Cluster, n: int, deadline_s: float) -> None:
    """Return once node n is alive in every running node's view and its own view has every
    running node alive; NemesisError naming who still disagrees after `deadline_s`."""
    from harness.checkers.membership import normalise_state
    from harness.probes import probe_for

    running = [node for node in cluster.nodes if node.state == "running"]
    ids = [str(node.id) for node in running]
    probe = probe_for(cluster.settings, [node.id for node in cluster.nodes])
    end = time.monotonic() + deadline_s
    missing: dict[str, str] = {}
    try:
        while True:
            missing = {}
            for node in running:
                try:
                    view = probe.view(node)
                except grpc.RpcError as exc:
                    missing[str(node.id)] = f"no answer ({exc.code().name})"
                    continue
                states = {m: normalise_state(s) for m, s in view.items()}
                wanted = ids if node.id == n else [str(n)]
                wrong = [f"{m} {states.get(m, 'absent')}" for m in wanted
                         if m != str(node.id) and states.get(m) != "alive"]
                if wrong:
                    missing[str(node.id)] = ", ".join(wrong)
            if not missing or time.monotonic() > end:
                break
            time.sleep(REJOIN_POLL_S)
    finally:
        close = getattr(probe, "close", None)
        if close:
            close()
    if missing:
        raise NemesisError(
            f"node {n} did not rejoin within REJOIN_DEADLINE_S={deadline_s:g}s: "
            + "; ".join(f"node {o} sees {what}" for o, what in sorted(missing.items())))
