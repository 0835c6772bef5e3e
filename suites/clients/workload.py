"""What the client-behaviour tests do to a stream: write tagged batches, keep appending until
one is acknowledged, read everything back through the raw baseline, judge the history."""

from __future__ import annotations

import itertools
import time
import uuid

from harness.checkers import stream_set
from harness.checkers.result import Result
from harness.clients import raw_driver
from harness.clients.driver import ClientDriver, Reply, raw_payload
from harness.clients.python_driver import PythonDriver

from .owner_failure import SCHEDULING_SLACK_S

# After membership confirms the owner dead, a client may still spend one call on the dead
# owner (up to its own call deadline) and one more on an owner a lookup named just before
# the confirmation reached that node; then it must be through.
CLIENT_CALL_DEADLINE_S = max(raw_driver.CALL_TIMEOUT, PythonDriver.op_deadline_s or 0)
RECOVERY_BOUND_S = 2 * CLIENT_CALL_DEADLINE_S + SCHEDULING_SLACK_S

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def batch_of(count: int, prefix: str) -> list[dict]:
    return [raw_payload(f"{prefix}-{next(_ids)}") for _ in range(count)]


def final_read_error(baseline: ClientDriver, stream: str) -> str | None:
    """The final read: every shard from EARLIEST through the raw baseline, recorded; the
    error that stopped it, if any."""
    shards = baseline.call("list_shards", stream=stream)
    if not shards.ok:
        return f"list_shards({stream}) during the final read: {shards.status}: {shards.error}"
    for shard in shards.value["shards"]:
        reply = baseline.read_shard(stream, shard["shard_id"], final=True)
        if not reply.ok:
            return f"final read of shard {shard['shard_id']}: {reply.status}: {reply.error}"
    return None


def drain(baseline: ClientDriver, stream: str) -> None:
    error = final_read_error(baseline, stream)
    assert error is None, error


def judge(history, stream: str) -> Result:
    return stream_set.check(
        history,
        select=lambda op: (
            op.f not in ("append", "read") or (op.value or {}).get("stream") == stream
        ),
    )


def node_of(cluster, endpoint: str) -> int:
    for node in cluster.nodes:
        if str(node.client) == endpoint:
            return node.id
    raise AssertionError(f"{endpoint} is not a node of this cluster: {cluster.client_urls()}")


def shard_owner(cluster, baseline: ClientDriver, stream: str) -> tuple[int, int]:
    shards = baseline.call("list_shards", stream=stream).value["shards"]
    shard_id = shards[0]["shard_id"]
    owner = baseline.call("lookup_shard", shard_id=shard_id)
    assert owner.ok, owner.error
    return shard_id, node_of(cluster, owner.value["node"])


# Of the recovery allowance above: the calls a client may still lose to the dead owner.
DEAD_OWNER_CALLS_ALLOWED = 2


def recovers_from_dead_owner(
    driver: ClientDriver, stream: str, deadline_s: float, prefix: str, dead: str
) -> tuple[Reply, str | None]:
    """`appends_until`, ended as soon as the client is evidently not recovering: more calls
    than the allowance failed against the dead owner's address `dead` after every survivor
    confirmed it dead. Returns the last reply and, when it ended so, what was seen."""
    deadline = time.monotonic() + deadline_s
    at_dead = 0
    while True:
        reply = driver.append(stream, batch_of(1, prefix))
        if reply.ok:
            return reply, None
        # A call the driver abandoned as hung went to the one node that does not answer.
        if dead in (reply.error or "") or "ClientHung" in (reply.error or ""):
            at_dead += 1
            if at_dead > DEAD_OWNER_CALLS_ALLOWED:
                return reply, (
                    f"{at_dead} appends after the confirmation still went to the dead owner "
                    f"{dead} (a client may lose {DEAD_OWNER_CALLS_ALLOWED})"
                )
        if time.monotonic() >= deadline:
            return reply, None
        time.sleep(0.5)


def appends_until(driver: ClientDriver, stream: str, deadline_s: float, prefix: str) -> Reply:
    """Append one-record batches until one is acknowledged or the deadline passes; the last
    reply (its error is the client's own words for the finding)."""
    deadline = time.monotonic() + deadline_s
    while True:
        reply = driver.append(stream, batch_of(1, prefix))
        if reply.ok or time.monotonic() >= deadline:
            return reply
        time.sleep(0.5)
