"""The checkers against a real reference server, clean and with seeded defects.

A one-node cluster per case; a raw gRPC workload (create stream, subscribe, append, read the
shard with a shard reader, consume with StreamingFetch, acknowledge) records its history the
way suites do. The clean server
must pass every applicable checker; each seeded defect must be caught by the checker whose
promise it breaks, with the anomaly it names.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire
from harness.checkers import CheckOptions, check_all
from harness.cluster import Cluster
from harness.history import History, history_path

pytestmark = pytest.mark.slow

ACK_TIMEOUT_S = 1
RECORDS = 20
HOLD_BACK = {0, 5, 10, 15}  # not acknowledged on their first delivery


def _run_workload(cluster: Cluster, history: History) -> None:
    """Append RECORDS single-record batches, consume and ack them; hold some acks back once."""
    hstream = wire.stub(str(cluster.node(1).client))
    stream, sub = "checked", "checked-sub"
    hstream.CreateStream(api.Stream(streamName=stream, replicationFactor=1, shardCount=1))
    (shard,) = hstream.ListShards(api.ListShardsRequest(streamName=stream)).shards
    value = {"subscription": sub, "stream": stream, "ack_timeout_s": ACK_TIMEOUT_S,
             "offset": "earliest"}
    op = history.invoke("admin", "subscribe", value)
    hstream.CreateSubscription(api.Subscription(
        subscriptionId=sub, streamName=stream, ackTimeoutSeconds=ACK_TIMEOUT_S,
        maxUnackedRecords=1000, offset=api.SpecialOffset.EARLIEST))
    history.ok(op)

    for i in range(RECORDS):
        pid = f"p{i}"
        v = {"stream": stream, "key": "", "payload_id": pid, "shard": shard.shardId}
        op = history.invoke("producer", "append", v)
        reply = hstream.Append(api.AppendRequest(
            streamName=stream, shardId=shard.shardId,
            records=wire.batch([wire.raw_record(pid.encode())])))
        rid = reply.recordIds[0]
        history.ok(op, {**v, "record_id": [rid.shardId, rid.batchId, rid.batchIndex]})
    _read_shard(hstream, history, stream, shard.shardId)
    drain = history.invoke("admin", "drain", {"subscription": sub})

    consume = history.invoke("c1", "consume", {"subscription": sub, "consumer": "c1"})
    session = wire.FetchSession(hstream, sub, "c1")
    held: set[str] = set()
    acked: set[str] = set()
    deadline = time.monotonic() + 12
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            got = session.take(1, timeout=0.3)
            if not got:
                if len(acked) == RECORDS:
                    quiet_until = quiet_until or time.monotonic() + 3 * ACK_TIMEOUT_S
                    if time.monotonic() >= quiet_until:
                        break
                continue
            records: list[dict[str, Any]] = []
            to_ack = []
            for rid, record in got:
                pid = record.payload.decode()
                ids = [rid.shardId, rid.batchId, rid.batchIndex]
                records.append({"payload_id": pid, "record_id": ids, "consumer": "c1"})
                if int(pid[1:]) in HOLD_BACK and pid not in held:
                    held.add(pid)
                    continue
                acked.add(pid)
                to_ack.append(rid)
            fetch = history.invoke("c1", "fetch", {"subscription": sub, "consumer": "c1"})
            history.ok(fetch, {"subscription": sub, "consumer": "c1", "records": records})
            if to_ack:
                ids = [[r.shardId, r.batchId, r.batchIndex] for r in to_ack]
                ack = history.invoke("c1-acks", "ack",
                                     {"subscription": sub, "consumer": "c1", "record_ids": ids})
                session.ack(to_ack)
                history.ok(ack)
    finally:
        session.close()
        history.ok(consume)
        history.ok(drain, {"subscription": sub, "records": []})


def _read_shard(hstream: Any, history: History, stream: str, shard_id: int) -> None:
    """A fresh shard reader from EARLIEST to the tail: one complete read of the shard."""
    op = history.invoke("reader", "read", {"stream": stream, "shard": shard_id})
    hstream.CreateShardReader(api.CreateShardReaderRequest(
        streamName=stream, shardId=shard_id, readerId="checked-reader", timeout=200,
        shardOffset=api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST)))
    records: list[dict[str, Any]] = []
    for _ in range(RECORDS):  # bounded: at least one batch per call until the tail
        reply = hstream.ReadShard(api.ReadShardRequest(readerId="checked-reader", maxRecords=8))
        for received in reply.receivedRecords:
            for rid, record in zip(received.recordIds, wire.unbatch(received.record),
                                   strict=True):
                records.append({"payload_id": record.payload.decode(),
                                "record_id": [rid.shardId, rid.batchId, rid.batchIndex],
                                "consumer": "reader"})
        if len(records) >= RECORDS or not reply.receivedRecords:
            break
    history.ok(op, {"stream": stream, "shard": shard_id, "records": records, "complete": True})


@pytest.mark.parametrize(
    "defect,base_port,caught_by,anomaly",
    [
        (None, 19850, None, None),
        ("no-redelivery", 19860, "subscription", "not_redelivered"),
        ("redeliver-acked", 19870, "subscription", "acked_redelivered"),
        ("reorder-reads", 19880, "order", "shard_order"),
    ],
    ids=["clean", "no-redelivery", "redeliver-acked", "reorder-reads"],
)
def test_checkers_pass_the_clean_server_and_catch_defects(
    cluster_factory, request, defect, base_port, caught_by, anomaly
):
    cluster = cluster_factory(nodes=1, base_port=base_port, toxiproxy=False,
                              defects=(defect,) if defect else ())
    path = history_path(f"checkers-defects-{request.node.callspec.id}")
    with History(path) as history:
        _run_workload(cluster, history)
    report = check_all(history, CheckOptions(grace_s=0.5))
    evidence = f"history {path}\n{report.table()}\nlogs {dict(cluster.logs())}"
    assert set(report.results) == {"stream-set", "order", "subscription"}, evidence
    if defect is None:
        assert report.valid is True, evidence
        assert report.results["subscription"].counts["redeliveries"] >= len(HOLD_BACK), evidence
        return
    assert report.valid is False, evidence
    assert report.results[caught_by].counts[anomaly] > 0, evidence
    others = [name for name, r in report.results.items() if r.valid is False]
    assert others == [caught_by], evidence
