"""DescribeCluster, lookups and admin commands (protocol §3, §7)."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from HStream.Server import HStreamApi_pb2 as api

from harness import wire
from harness.findings import judge

from .conftest import shards_of

RUNNING = api.NodeState.Value("Running")


def members(description: api.DescribeClusterResponse) -> set[tuple[int, str, int]]:
    return {(node.id, node.host, node.port) for node in description.serverNodes}


@pytest.mark.conformance("api.cluster.describe")
def test_describe_cluster(hstream, endpoints):
    description = hstream.DescribeCluster(Empty())
    assert description.protocolVersion == "0.1.0", description.protocolVersion
    nodes = list(description.serverNodes)
    assert len(nodes) == len(endpoints), (
        f"{len(nodes)} nodes listed, cluster has {len(endpoints)}: {nodes}"
    )
    assert len({n.id for n in nodes}) == len(nodes), f"duplicate node ids: {nodes}"
    assert {wire.endpoint_of(n) for n in nodes} == set(endpoints), (
        f"advertised {sorted(wire.endpoint_of(n) for n in nodes)}, "
        f"cluster answers on {sorted(endpoints)}"
    )
    states = {s.node.id: s.state for s in description.serverNodesStatus}
    assert states == {n.id: RUNNING for n in nodes}, f"node states {states}"


@pytest.mark.conformance("api.cluster.same-view")
def test_every_node_same_members(every_node):
    views = [members(node.DescribeCluster(Empty())) for node in every_node]
    assert all(view == views[0] for view in views), f"views differ: {views}"


def owner_everywhere(every_node, ask) -> set[tuple[str, int]]:
    answers = set()
    for node in every_node:
        server = ask(node)
        answers.add((server.host, server.port))
    return answers


@pytest.mark.conformance("api.lookup.shard")
def test_lookup_shard(every_node, make_stream, hstream):
    stream = make_stream(shards=4)
    for shard in shards_of(hstream, stream.streamName):
        owners = set()
        for node in every_node:
            answer = node.LookupShard(api.LookupShardRequest(shardId=shard.shardId))
            assert answer.shardId == shard.shardId, f"asked {shard.shardId}, echoed {answer}"
            owners.add(wire.endpoint_of(answer.serverNode))
        assert len(owners) == 1, f"shard {shard.shardId}: nodes name different owners {owners}"


@pytest.mark.conformance("api.lookup.key")
def test_lookup_key(every_node):
    for key in ("a", "user-42", "", "🙂"):
        owners = owner_everywhere(
            every_node, lambda node, k=key: node.LookupKey(api.LookupKeyRequest(partitionKey=k))
        )
        assert len(owners) == 1, f"key {key!r}: owners {owners}"


@pytest.mark.conformance("api.lookup.resource")
def test_lookup_resource_matches_lookup_shard(every_node, make_stream, hstream):
    stream = make_stream(shards=3)
    for shard in shards_of(hstream, stream.streamName):
        for node in every_node:
            by_resource = node.LookupResource(
                api.LookupResourceRequest(
                    resType=api.ResourceType.Value("ResShard"), resId=str(shard.shardId)
                )
            )
            by_shard = node.LookupShard(api.LookupShardRequest(shardId=shard.shardId))
            assert wire.endpoint_of(by_resource) == wire.endpoint_of(by_shard.serverNode), (
                f"shard {shard.shardId}: LookupResource {by_resource} vs LookupShard {by_shard}"
            )


@pytest.mark.conformance("api.lookup.subscription")
def test_lookup_subscription(every_node, make_stream, subscribe):
    sub_id = subscribe(make_stream().streamName)
    owners = set()
    for node in every_node:
        answer = node.LookupSubscription(api.LookupSubscriptionRequest(subscriptionId=sub_id))
        assert answer.subscriptionId == sub_id, f"echoed {answer.subscriptionId}"
        owners.add(wire.endpoint_of(answer.serverNode))
    assert len(owners) == 1, f"subscription owners differ: {owners}"


@pytest.mark.conformance("api.lookup.shard-reader")
def test_lookup_shard_reader(every_node, hstream, make_stream, unique):
    stream = make_stream()
    shard = shards_of(hstream, stream.streamName)[0]
    reader_id = unique("rd")
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream.streamName,
            shardId=shard.shardId,
            readerId=reader_id,
            shardOffset=api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST),
            timeout=10,
        )
    )
    owners = set()
    for node in every_node:
        answer = node.LookupShardReader(api.LookupShardReaderRequest(readerId=reader_id))
        assert answer.readerId == reader_id, f"echoed {answer.readerId}"
        owners.add(wire.endpoint_of(answer.serverNode))
    assert len(owners) == 1, f"reader owners differ: {owners}"
    [owner] = owners
    wire.stub(owner).DeleteShardReader(api.DeleteShardReaderRequest(readerId=reader_id))


@pytest.mark.conformance("api.lookup.owner-is-member")
def test_owners_are_members(every_node, hstream, make_stream):
    known = {wire.endpoint_of(n) for n in hstream.DescribeCluster(Empty()).serverNodes}
    stream = make_stream(shards=8)
    for shard in shards_of(hstream, stream.streamName):
        owner = hstream.LookupShard(api.LookupShardRequest(shardId=shard.shardId)).serverNode
        assert wire.endpoint_of(owner) in known, f"owner {owner} not in DescribeCluster {known}"


def admin(hstream, command: str) -> dict:
    result = hstream.SendAdminCommand(api.AdminCommandRequest(command=command)).result
    try:
        return json.loads(result)
    except ValueError as error:
        raise AssertionError(f"{command!r} answered non-JSON {result!r}") from error


@pytest.mark.conformance("api.admin.status")
def test_admin_status(hstream, endpoints):
    answer = admin(hstream, "server status")
    assert answer.get("type") == "table", f"'server status' answered {answer}"
    content = answer.get("content")
    # A table is {"headers": [...], "rows": [[...], ...]} (hadmin's shape, §7).
    assert isinstance(content, dict) and isinstance(content.get("rows"), list), (
        f"'server status' table has no rows: {content!r}"
    )
    headers = [str(h).lower() for h in content.get("headers", [])]
    for column in ("node id", "state", "address"):
        assert column in headers, f"'server status' lacks a {column!r} column: {headers}"
    state_at, address_at = headers.index("state"), headers.index("address")
    states = {str(row[address_at]): str(row[state_at]) for row in content["rows"]}
    for endpoint in endpoints:
        assert states.get(endpoint) == "Running", (
            f"'server status' shows {endpoint} as {states.get(endpoint)!r}, want 'Running'; "
            f"table {states}"
        )


@pytest.mark.conformance("api.admin.ready")
def test_admin_ready(hstream):
    answer = admin(hstream, "server ready")
    assert answer.get("type") != "error", f"'server ready' answered {answer}"
    assert "ready" in json.dumps(answer.get("content")).lower(), answer


@pytest.mark.conformance("api.admin.unknown-command")
def test_admin_unknown_command(hstream, target_settings):
    # §7 names the commands and their result {"type": "table"|"plain"|"error", ...}; a
    # command that does not parse is the caller's mistake, so the protocol's answers are an
    # "error" result or INVALID_ARGUMENT. INTERNAL says the server broke, and its plain text
    # is not the §6 JSON body: real HStreamDB answers that (its parse failure is an ioError),
    # a departure reported as the target's finding.
    command = "server frobnicate"
    try:
        answer = admin(hstream, command)
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
        judge(
            target_settings,
            "admin_parse_error_internal",
            f"{command!r} failed {error}",
            conforms=error.status == grpc.StatusCode.INVALID_ARGUMENT,
            departs=error.status == grpc.StatusCode.INTERNAL,
            protocol='an "error" result or INVALID_ARGUMENT',
        )
        return
    assert answer.get("type") == "error", (
        f"{command!r} answered {answer}; an unknown command must be an error, not success"
    )
