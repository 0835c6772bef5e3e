"""Play a schedule of client and nemesis steps against a cluster, then judge it.

The schedule is a `harness.nemesis.Schedule` (drawn by the search in
suites/durability/test_schedule_search.py with `program_strategy`), saved as JSON when it
fails and replayed exactly with `hstream-conformance replay <file>`:

    {"seed": 0, "nodes": [1, 2, 3],
     "cluster": {"nodes": 3, "defects": [...], "gossip": {...}, "seed": 7},
     "steps": [{"action": "append", "args": {"key": "k1", "records": 3}},
               {"action": "start", "fault": {"fault": {"kind": "kill-store", ...}, ...}},
               {"action": "heal"},
               {"action": "read"}]}

Client steps: `append` (one batch through the raw driver), `read` (every shard from
EARLIEST); the nemesis carries out the rest. `finish()` heals, drains and runs the
stream-set checker: nothing acknowledged may be lost. Step programs saved before
(`{"cluster", "steps": [{"op": ...}]}`) still load (`Schedule.from_json`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from functools import partial

from harness import HarnessError
from harness.checkers import stream_set
from harness.checkers.result import Result
from harness.clients.driver import ClientDriver, Reply, raw_payload
from harness.cluster import Cluster
from harness.history import History
from harness.nemesis import Nemesis, Schedule, Step, play

# What a search may aim its faults at: the owners of the shards its keys (program_strategy's
# "a", "b", "c") go to, and a seed; bound to each runner's own stream when played.
ROLES = tuple(f"shard-owner:{{stream}}/key={key}" for key in ("a", "b", "c")) + ("seed",)


class ScheduleRunner:
    """Plays schedules on one cluster; one runner per schedule (it owns a fresh stream)."""

    def __init__(self, cluster: Cluster, history: History) -> None:
        self.cluster = cluster
        self.history = history
        self.nemesis = Nemesis(cluster, history)
        self.stream = f"search_{uuid.uuid4().hex[:10]}"
        self._ids = itertools.count()
        self.client = ClientDriver("raw", history=history, process="search-client", timeout=15)
        self._connect()
        created = self.client.simple("create_stream", stream=self.stream, shards=2)
        if not created.ok:
            raise HarnessError(f"could not create {self.stream}: {created.error}")

    def _connect(self, within_s: float = 30) -> None:
        deadline = time.monotonic() + within_s
        while not self.client.connect([str(n.client) for n in self.cluster.nodes]).ok:
            if time.monotonic() > deadline:
                raise HarnessError(f"no node answered within {within_s:.0f} s")
            time.sleep(0.5)

    def client_step(self, step: Step) -> None:
        """Carry out an `append` or `read` step (the nemesis does the others)."""
        if step.action == "append":
            records = [raw_payload(f"p{next(self._ids)}") for _ in range(int(step.args["records"]))]
            self.client.append(self.stream, records, key=str(step.args.get("key", "")))
        elif step.action == "read":
            shards = self.client.call("list_shards", stream=self.stream)
            for shard in (shards.value or {}).get("shards", []) if shards.ok else []:
                self.client.read_shard(self.stream, shard["shard_id"])
        else:
            raise HarnessError(f"{step.action!r} is no client step (append, read)")

    def play(self, schedule: Schedule) -> None:
        nodes = {n.id for n in self.cluster.nodes}
        if not set(schedule.nodes) <= nodes:
            raise HarnessError(
                f"the schedule is for nodes {list(schedule.nodes)}, this cluster has "
                f"{sorted(nodes)}"
            )
        # Roles drawn before this runner named its stream ("shard-owner:{stream}/key=a").
        play(schedule.bind(stream=self.stream), self.nemesis, client=self.client_step)

    def _until_answered(self, what: str, call: Callable[[], Reply], within_s: float) -> Reply:
        """Repeat `call` while its outcome is indeterminate (`info`: UNAVAILABLE, deadline).

        After a heal the store or a node has just restarted and the servers reconnect with a
        backoff, so the first calls may find it unavailable; a definite failure is final.
        """
        deadline = time.monotonic() + within_s
        while True:
            reply = call()
            if reply.ok or reply.type == "fail" or time.monotonic() > deadline:
                if not reply.ok:
                    raise HarnessError(
                        f"{what} after healing failed (still failing after {within_s:.0f} s): "
                        f"{reply.error}"
                    )
                return reply
            time.sleep(0.5)

    def finish(self) -> Result:
        """Heal, drain every shard (the final read) and judge: nothing acked lost."""
        try:
            self.nemesis.teardown()
            self._connect(within_s=60)
            shards = self._until_answered(
                "list_shards",
                lambda: self.client.call("list_shards", stream=self.stream),
                within_s=60,
            )
            for shard in shards.value["shards"]:
                shard_id = shard["shard_id"]
                self._until_answered(
                    f"the final read of shard {shard_id}",
                    partial(self.client.read_shard, self.stream, shard_id, final=True),
                    within_s=60,
                )
        finally:
            self.client.close()
        return stream_set.check(
            self.history,
            select=lambda op: (
                op.f not in ("append", "read") or (op.value or {}).get("stream") == self.stream
            ),
        )


def replay(schedule: Schedule, cluster: Cluster, history: History) -> Result:
    runner = ScheduleRunner(cluster, history)
    runner.play(schedule)
    return runner.finish()
