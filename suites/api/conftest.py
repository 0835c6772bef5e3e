"""Raw gRPC access to the cluster under test, so no client library can hide a server fault."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import wire
from harness.targets import settings_for
from harness.targets.settings import TargetSettings


@pytest.fixture(scope="module")
def hstream(endpoints: list[str]) -> api_grpc.HStreamApiStub:
    """A stub on the first node."""
    return wire.stub(endpoints[0])


@pytest.fixture(scope="module")
def target_settings(request: pytest.FixtureRequest) -> TargetSettings:
    """What the target under test runs with, its known departures from the protocol among
    them (harness.findings reports those as its findings): the running cluster's, or, with
    --cluster-url, what the run's --target reports."""
    if request.config.getoption("cluster_url", default=None):
        return settings_for(request.getfixturevalue("cluster_spec"))
    return request.getfixturevalue("cluster").settings


@pytest.fixture(scope="module")
def every_node(endpoints: list[str]) -> list[api_grpc.HStreamApiStub]:
    return [wire.stub(endpoint) for endpoint in endpoints]


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test (or earlier run against the same cluster) uses."""
    return lambda prefix: f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_stream(
    hstream: api_grpc.HStreamApiStub, unique: Callable[[str], str]
) -> Iterator[Callable[..., api.Stream]]:
    created: list[str] = []

    def make(shards: int = 1, prefix: str = "s") -> api.Stream:
        name = unique(prefix)
        stream = hstream.CreateStream(
            api.Stream(streamName=name, replicationFactor=1, shardCount=shards)
        )
        created.append(name)
        return stream

    yield make
    for name in created:
        try:
            hstream.DeleteStream(
                api.DeleteStreamRequest(streamName=name, ignoreNonExist=True, force=True)
            )
        except grpc.RpcError:
            pass  # the cluster may be down at the end of a failing test: nothing to keep


def owner_stub(hstream: api_grpc.HStreamApiStub, sub_id: str) -> api_grpc.HStreamApiStub:
    """A stub on the subscription's owner, as LookupSubscription names it."""
    owner = hstream.LookupSubscription(api.LookupSubscriptionRequest(subscriptionId=sub_id))
    return wire.stub(wire.endpoint_of(owner.serverNode))


@pytest.fixture
def subscribe(hstream, unique) -> Iterator[Callable[..., str]]:  # type: ignore[no-untyped-def]
    """`subscribe(stream, ack_timeout=, max_unacked=, offset=) -> id`; deleted (through
    the owner: DeleteSubscription is ownership-checked, §3) after the test."""
    created: list[str] = []

    def make(
        stream: str,
        ack_timeout: int = 30,
        max_unacked: int = 10_000,
        offset: int = api.SpecialOffset.EARLIEST,
    ) -> str:
        sub_id = unique("sub")
        hstream.CreateSubscription(
            api.Subscription(
                subscriptionId=sub_id,
                streamName=stream,
                ackTimeoutSeconds=ack_timeout,
                maxUnackedRecords=max_unacked,
                offset=offset,
            )
        )
        created.append(sub_id)
        return sub_id

    yield make
    for sub_id in created:
        try:
            owner_stub(hstream, sub_id).DeleteSubscription(
                api.DeleteSubscriptionRequest(subscriptionId=sub_id, force=True)
            )
        except grpc.RpcError:
            pass  # deleted by the test itself, or the cluster is down: nothing to keep


def expect_error(
    call: Callable[[], object], status: grpc.StatusCode, code: int | None = None
) -> wire.WireError:
    """Run `call`, demand it fails with `status` (and HStreamDB error `code`), return the error."""
    try:
        result = call()
    except grpc.RpcError as raw:
        error = wire.WireError.of(raw)
    else:
        raise AssertionError(f"expected {status.name} (code {code}), got success: {result!r}")
    assert error.status == status, f"expected {status.name} (code {code}), got {error}"
    if code is not None:
        assert error.code == code, f"expected error code {code}, got {error}"
    return error


def shards_of(hstream: api_grpc.HStreamApiStub, stream: str) -> list[api.Shard]:
    shards = hstream.ListShards(api.ListShardsRequest(streamName=stream)).shards
    return sorted(shards, key=lambda shard: int(shard.startHashRangeKey))


def append(
    hstream: api_grpc.HStreamApiStub,
    stream: str,
    shard_id: int,
    records: list[api.HStreamRecord],
    compression: str = "none",
) -> api.AppendResponse:
    return hstream.Append(
        api.AppendRequest(
            streamName=stream, shardId=shard_id, records=wire.batch(records, compression)
        )
    )


def read_all(
    hstream: api_grpc.HStreamApiStub,
    stream: str,
    shard_id: int,
    reader_prefix: str = "r",
    offset: api.ShardOffset | None = None,
    want_batches: int | None = None,
) -> list[api.ReceivedRecord]:
    """Every batch of a shard through a fresh shard reader, until a read comes back empty."""
    reader_id = f"{reader_prefix}_{uuid.uuid4().hex[:12]}"
    hstream.CreateShardReader(
        api.CreateShardReaderRequest(
            streamName=stream,
            shardId=shard_id,
            shardOffset=offset or api.ShardOffset(specialOffset=api.SpecialOffset.EARLIEST),
            readerId=reader_id,
            timeout=200,
        )
    )
    batches: list[api.ReceivedRecord] = []
    # An empty read ends the scan; when the caller knows how many batches to expect, a few
    # more empty reads (each blocking up to the reader's 200 ms timeout) are allowed first.
    empty_reads_left = 1 if want_batches is None else 25
    try:
        while empty_reads_left > 0:
            got = hstream.ReadShard(api.ReadShardRequest(readerId=reader_id, maxRecords=100))
            if not got.receivedRecords:
                if want_batches is not None and len(batches) >= want_batches:
                    break
                empty_reads_left -= 1
                continue
            batches.extend(got.receivedRecords)
    finally:
        delete_reader(hstream, reader_id)
    return batches


def delete_reader(hstream: api_grpc.HStreamApiStub, reader_id: str) -> None:
    """DeleteShardReader through the reader's owner: the call is ownership-checked (§3)."""
    owner = hstream.LookupShardReader(api.LookupShardReaderRequest(readerId=reader_id))
    wire.stub(wire.endpoint_of(owner.serverNode)).DeleteShardReader(
        api.DeleteShardReaderRequest(readerId=reader_id)
    )
