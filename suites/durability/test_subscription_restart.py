"""Subscriptions resume from their checkpoint when every server restarts.

Servers are stateless: a checkpoint (the contiguous acknowledged prefix per shard) lives in
the store, so after all servers restart a consumer gets exactly what was not acknowledged
before, and nothing it already acknowledged.
"""

from __future__ import annotations

import time
import uuid

import pytest

from harness.checkers import CheckOptions, check_all
from harness.clients.driver import ClientDriver, raw_payload
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis


@pytest.mark.nemesis
def test_consumer_resumes_from_checkpoint_after_restart(request, cluster_factory, evidence):
    cluster = cluster_factory()
    endpoints = [str(n.client) for n in cluster.nodes]
    path = history_path(request.node.nodeid)
    evidence.history(path)
    stream, sub = f"ck_{uuid.uuid4().hex[:8]}", f"cksub_{uuid.uuid4().hex[:8]}"
    with History(path) as history:
        with ClientDriver("raw", history=history, process="before") as client:
            assert client.connect(endpoints).ok
            assert client.simple("create_stream", stream=stream, shards=2).ok
            assert client.subscribe(sub, stream, ack_timeout=60).ok
            for i in range(10):
                assert client.append(
                    stream, [raw_payload(f"old-{i}-{j}") for j in range(5)], key=f"k{i}"
                ).ok
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 50 and time.monotonic() < deadline:
                reply = client.fetch(sub, "c1", max=50, timeout_ms=1000, ack=True)
                assert reply.ok, reply.error
                got += reply.value["records"]
            assert len(got) == 50, f"only {len(got)} of 50 records delivered before restart"
            time.sleep(1.5)  # let the acks reach the server and its checkpoint the store
            client.call("stop_consumer", subscription=sub, consumer="c1")

        nemesis = Nemesis(cluster, history)
        try:
            for node in cluster.nodes:  # one at a time, as a rolling restart
                nemesis.invoke(FAULTS["restart-one"].on(node.id))
        finally:
            nemesis.teardown()

        with ClientDriver("raw", history=history, process="after") as client:
            deadline = time.monotonic() + 30
            while not client.connect(endpoints).ok and time.monotonic() < deadline:
                time.sleep(0.5)
            for i in range(3):
                assert client.append(
                    stream, [raw_payload(f"new-{i}-{j}") for j in range(5)], key=f"k{i}"
                ).ok
            after = []
            deadline = time.monotonic() + 15
            drain = None
            while time.monotonic() < deadline:
                if drain is None and time.monotonic() > deadline - 3:
                    # the last fetches are the drain: what was acked before must arrive now
                    drain = history.invoke("drain", "drain", {"subscription": sub})
                reply = client.fetch(sub, "c2", max=100, timeout_ms=1000, ack=True)
                if reply.ok:
                    after += reply.value["records"]
            if drain is not None:
                history.ok(drain)
            ids = sorted(r["payload_id"] for r in after)
            replayed = [i for i in ids if i.startswith("old-")]
            assert not replayed, (
                f"after restarting every server the consumer got {len(replayed)} records it "
                f"had acknowledged before (e.g. {replayed[:5]}): the checkpoint was lost; "
                f"history {path}"
            )
            assert len({i for i in ids if i.startswith("new-")}) == 15, (
                f"new records delivered after restart: {ids}"
            )
        report = check_all(history, CheckOptions(checkers=["stream-set", "order"]))
        for name, result in report.results.items():
            evidence.result(name, result)
        summary = "; ".join(r.summary() for r in report.results.values())
        assert report.valid is True, f"{summary}; history {path}"
