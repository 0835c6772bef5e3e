"""The node while its store is down: Append answers UNAVAILABLE (a definite, retryable
status, per protocol §6), and the node serves again once the store is back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc
from refcluster_launcher import launch, retry_unavailable

from refserver import records

pytestmark = pytest.mark.slow


def test_append_is_unavailable_while_the_store_is_down(tmp_path: Path) -> None:
    with launch(tmp_path, 1) as cluster:
        with grpc.insecure_channel(cluster.nodes[0].url) as channel:
            stub = api_grpc.HStreamApiStub(channel)
            stub.CreateStream(api.Stream(streamName="outage", replicationFactor=1, shardCount=1))
            shard = stub.ListShards(api.ListShardsRequest(streamName="outage")).shards[0].shardId
            request = api.AppendRequest(
                streamName="outage",
                shardId=shard,
                records=records.encode([api.HStreamRecord(payload=b"x")]),
            )
            first = stub.Append(request).recordIds[0].batchId

            cluster.store.kill(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Append(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
            assert "store" in json.loads(raised.value.details())["message"]

            cluster.store.start()
            cluster.store.wait_ready(occurrence=2)
            # The node reconnects within its reconnect backoff; retry like a client would.
            again = retry_unavailable(lambda: stub.Append(request, timeout=30)).recordIds[0].batchId
            assert again == first + 1, f"LSN after the outage: {again}, before: {first}"
