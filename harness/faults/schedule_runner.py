"""Play a fault schedule of client and nemesis steps against a cluster, then judge it.

A *step program* is plain data, so a failing one found by the Hypothesis search
(suites/durability/test_schedule_search.py) is saved as JSON and replayed exactly with
`hstream-conformance replay <file>`:

    {"cluster": {"nodes": 3, "defects": [...], "gossip": {...}, "seed": 7},
     "steps": [{"op": "append", "key": "k1", "records": 3},
               {"op": "fault", "fault": "kill-store", "action": "start"},
               {"op": "heal"},
               {"op": "read"}]}

Ops: `append` (one batch through the raw driver), `read` (every shard from EARLIEST),
`fault` (start/stop a named nemesis fault; which nodes is drawn from the seed), `heal`
(undo every fault), `wait` (`seconds`). `finish()` heals, drains and runs the stream-set
checker: nothing acknowledged may be lost.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.cluster import Cluster
from harness.checkers import stream_set
from harness.checkers.result import Result
from harness.clients.driver import ClientDriver, Reply, raw_payload
from harness.faults.nemesis import FAULTS, FaultInstance, Nemesis
from harness.history import History

STEP_OPS = ("append", "read", "fault", "heal", "wait")


@dataclass
class Program:
    cluster: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "steps": self.steps}

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> Program:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise HarnessError(f"cannot read schedule {path}: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise HarnessError(f"{path} is not a step program (needs a 'steps' list)")
        for i, step in enumerate(data["steps"]):
            if not isinstance(step, dict) or step.get("op") not in STEP_OPS:
                raise HarnessError(f"{path}: step {i} {step!r} is not one of {STEP_OPS}")
        return cls(cluster=dict(data.get("cluster") or {}), steps=list(data["steps"]))


class ScheduleRunner:
    """Runs steps on one cluster; one runner per program (it owns a fresh stream)."""

    def __init__(self, cluster: Cluster, history: History, seed: int = 0) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = random.Random(seed)
        self.nemesis = Nemesis(cluster, history)
        self.stream = f"search_{uuid.uuid4().hex[:10]}"
        self.faults: dict[str, FaultInstance] = {}
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

    def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        if op == "append":
            records = [raw_payload(f"p{next(self._ids)}") for _ in range(int(step["records"]))]
            self.client.append(self.stream, records, key=str(step.get("key", "")))
        elif op == "read":
            shards = self.client.call("list_shards", stream=self.stream)
            for shard in (shards.value or {}).get("shards", []) if shards.ok else []:
                self.client.read_shard(self.stream, shard["shard_id"])
        elif op == "fault":
            name = step["fault"]
            if name not in FAULTS:
                raise HarnessError(f"unknown fault {name!r} in schedule")
            instance = self.faults.get(name)
            if instance is None:
                instance = FAULTS[name].resolve([n.id for n in self.cluster.nodes], self.rng)
                self.faults[name] = instance
            self.nemesis.invoke(instance, step.get("action", "start"))
        elif op == "heal":
            self.nemesis.heal()
            self.faults.clear()
        elif op == "wait":
            time.sleep(float(step.get("seconds", 1)))

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


def replay(program: Program, cluster: Cluster, history: History) -> Result:
    runner = ScheduleRunner(cluster, history, seed=int(program.cluster.get("seed", 0)))
    for step in program.steps:
        runner.step(step)
    return runner.finish()
