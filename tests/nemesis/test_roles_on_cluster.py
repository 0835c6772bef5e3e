"""Faults aimed at roles on a real 3-node reference cluster: every role resolves to the node
the cluster itself names, from whichever node is asked, and a kill aimed at the
subscription owner really kills the node serving the subscription's consumers."""

from __future__ import annotations

import time
import uuid

import pytest
from HStream.Server import HStreamApi_pb2 as api

from harness import wire
from harness.cluster import Cluster
from harness.history import History
from harness.nemesis import Fault, Nemesis, NemesisError
from harness.nemesis.roles import Resolver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(
        nodes=3, toxiproxy=True, toxiproxy_url=None, backend="local", target="reference",
        defects=(),
        gossip={"probe_interval_ms": 300, "roundtrip_timeout_ms": 120,
                "gossip_interval_ms": 150, "suspicion_mult": 3},
    ),
]
SHARDS = 3
# A consumer's stream to a killed server ends within this (the connection is reset at once;
# margin for a loaded machine).
STREAM_END_DEADLINE_S = 10.0


def _resources(cluster: Cluster) -> tuple[str, str]:
    stream, sub = f"roles_{uuid.uuid4().hex[:8]}", f"rolessub_{uuid.uuid4().hex[:8]}"
    hstream = wire.stub(str(cluster.node(1).client))
    hstream.CreateStream(api.Stream(streamName=stream, replicationFactor=1,
                                    shardCount=SHARDS), timeout=10)
    hstream.CreateSubscription(api.Subscription(subscriptionId=sub, streamName=stream,
                                                ackTimeoutSeconds=30), timeout=10)
    return stream, sub


def _node_named(cluster: Cluster, server: api.ServerNode) -> int:
    [node] = [n.id for n in cluster.nodes if str(n.client) == wire.endpoint_of(server)]
    return node


def test_every_role_resolves_to_the_node_every_member_names(cluster: Cluster):
    stream, sub = _resources(cluster)
    resolver = Resolver(cluster)
    shards = resolver.shards(stream)
    assert len(shards) == SHARDS
    for n in cluster.nodes:  # each member, asked itself, names the same owners
        hstream = wire.stub(str(n.client))
        for shard in shards:
            said = hstream.LookupShard(api.LookupShardRequest(shardId=shard.shardId), timeout=5)
            answer = resolver.resolve(f"shard-owner:{stream}/{shard.shardId}")
            assert answer.nodes == (_node_named(cluster, said.serverNode),)
            assert answer.call.startswith(f"LookupShard(shardId={shard.shardId})")
        said = hstream.LookupSubscription(api.LookupSubscriptionRequest(subscriptionId=sub),
                                          timeout=5)
        assert resolver.resolve(f"subscription-owner:{sub}").nodes == (
            _node_named(cluster, said.serverNode),)
    key_shard = wire.shard_for_key(shards, "some-key").shardId
    assert resolver.resolve(f"shard-owner:{stream}/key=some-key").answer["shard"] == key_shard
    assert resolver.resolve(f"shard-owner:{stream}").answer["shard"] == shards[0].shardId
    assert resolver.resolve("seed").nodes == (1,)
    assert resolver.resolve("store").nodes == ()


def test_a_kill_aimed_at_the_subscription_owner_ends_its_consumers_stream(cluster: Cluster):
    stream, sub = _resources(cluster)
    history = History()
    history.invoke("setup", "subscribe", {"subscription": sub, "stream": stream})
    owner = Resolver(cluster).resolve(f"subscription-owner:{sub}").nodes[0]
    others = [n.id for n in cluster.nodes if n.id != owner]
    session = wire.FetchSession(wire.stub(str(cluster.node(owner).client)), sub, "c1")
    nemesis = Nemesis(cluster, history)
    try:
        time.sleep(0.5)
        assert not session.ended.is_set(), f"the consumer's stream ended early: {session.error}"
        done = nemesis.invoke(Fault("kill").aim(f"subscription-owner:{sub}"), "start")
        assert done is not None and done.value["nodes"] == [owner] == done.value["down"]
        assert cluster.node(owner).state == "killed"
        assert all(cluster.node(n).state == "running" for n in others)
        assert session.ended.wait(STREAM_END_DEADLINE_S), "the owner's consumer stream lived on"
        hit = done.value["hit"]
        assert f"subscription-owner:{sub}" in hit["roles"][str(owner)]
        assert hit["owners"][f"subscription-owner:{sub}"] == owner
        nemesis.invoke(Fault("kill").aim(f"subscription-owner:{sub}"), "stop")
        assert cluster.node(owner).state == "running"  # the stop restarted the node it killed
    finally:
        session.close()
        nemesis.teardown()


def test_a_role_the_cluster_cannot_answer_is_refused_before_any_fault(cluster: Cluster):
    history = History()
    nemesis = Nemesis(cluster, history)
    with pytest.raises(NemesisError, match="no node answered ListShards"):
        nemesis.invoke(Fault("kill").aim("shard-owner:no_such_stream"), "start")
    nemesis.teardown()
    assert all(n.state == "running" for n in cluster.nodes)
    assert [op.type for op in history if op.f.startswith("kill")] == ["invoke", "fail"]
