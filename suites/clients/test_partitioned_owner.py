"""Appends while the owner of their shard is partitioned away (docker backend).

The owner is cut off from its peers by a grudge (iptables in the containers) and from the
clients by its client proxy going down, so its side of the partition holds no one: the rest
of the cluster confirms it dead and lookups name a survivor. A correct client's appends fail
or are indeterminate until then, and are acknowledged again once it looks the owner up anew
(the raw baseline does after any error on the cached owner); after the heal, a final read
holds every acknowledged record.
"""

from __future__ import annotations

import time

import pytest

from harness import images
from harness.faults.partition import isolate
from harness.nemesis import FAULTS, Nemesis

from .findings import PYTHON_STALE_LOOKUP
from .owner_failure import FAST_GOSSIP, DeathWatch, confirmation_bound_s
from .workload import (
    RECOVERY_BOUND_S,
    batch_of,
    final_read_error,
    judge,
    recovers_from_dead_owner,
    shard_owner,
    unique,
)

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module", autouse=True)
def docker_engine() -> None:
    try:
        images.connect(timeout=10).close()
    except images.DockerUnavailable as reason:
        pytest.skip(str(reason))


@pytest.mark.nemesis
@pytest.mark.client_deviation("python", PYTHON_STALE_LOOKUP)
def test_append_while_owner_partitioned(
    client_name, drivers, cluster_factory, cluster_spec, history, evidence
):
    # Processes on one machine cannot be cut off from one another: a local run partitions
    # containers; a runtime with real hosts keeps its own.
    backend = "docker" if cluster_spec.backend == "local" else cluster_spec.backend
    cluster = cluster_factory(backend=backend, nodes=3, toxiproxy=True, gossip=FAST_GOSSIP)
    endpoints = [url.removeprefix("hstream://") for url in cluster.client_urls()]
    baseline = drivers("raw")
    assert baseline.connect(endpoints).ok
    stream = unique("part")
    assert baseline.simple("create_stream", stream=stream, shards=1).ok
    client = drivers(client_name)
    reply = client.connect(endpoints)
    assert reply.ok, f"{client_name} could not connect to {endpoints}: {reply.error}"
    for _ in range(3):
        written = client.append(stream, batch_of(4, "before"))
        assert written.ok, f"{client_name} append before the partition: {written.error}"
    shard_id, owner = shard_owner(cluster, baseline, stream)
    survivors = {n.id: str(n.client) for n in cluster.nodes if n.id != owner}
    assert baseline.connect(list(survivors.values())).ok
    ids = [n.id for n in cluster.nodes]
    watch = DeathWatch(owner, survivors, confirmation_bound_s(cluster.settings, len(ids)))
    nemesis = Nemesis(cluster, history)
    cut_off = FAULTS["partition-isolate-one"].against(isolate(owner, ids), ids)
    owner_link = FAULTS["client-down"].on(owner)
    try:
        nemesis.invoke(cut_off, "start")
        nemesis.invoke(owner_link, "start")
        during = 0
        while not watch.confirmed():
            assert not watch.expired, watch.failure()
            client.append(stream, batch_of(1, "during"))
            during += 1
            time.sleep(0.2)  # a client retrying at its own pace, not a flood of history
        relookup = baseline.call("lookup_shard", shard_id=shard_id)
        assert relookup.ok and relookup.value["node"] in survivors.values(), (
            f"after node {owner} was confirmed dead, the survivors still route shard "
            f"{shard_id} to {relookup.value or relookup.error}"
        )
        last, evident = recovers_from_dead_owner(
            client, stream, RECOVERY_BOUND_S, "after", str(cluster.node(owner).client)
        )
    finally:
        nemesis.teardown()  # the owner's link back, then the partition healed
    evidence.figures(
        "partitioned owner",
        {"confirmed_dead_after_s": watch.confirmed_after_s, "appends_while_deciding": during},
    )
    assert last.ok, (
        f"{client_name}: {evident or f'no append acknowledged within {RECOVERY_BOUND_S:.0f} s'}"
        " after every "
        f"survivor confirmed the partitioned node {owner} (owner of shard {shard_id}) dead "
        f"and routed the shard to {relookup.value['node']}; the client's last error: "
        f"{last.status}: {last.error}; history: {history.path}"
    )
    read_error = final_read_error(baseline, stream)
    assert read_error is None, f"{read_error} (history: {history.path})"
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"
