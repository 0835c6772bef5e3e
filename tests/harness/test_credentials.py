"""The run's credential reaches every channel and driver, so whole suites run on a token cluster.

A 1-node reference cluster with a token: a channel without the credential is refused, the same
call with the run's credential succeeds, a call's own authorization wins over the run's, and
the raw driver connects with the token while the official Python client says it cannot.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from harness import credentials, wire
from harness.clients.driver import ClientDriver
from harness.history import History
from harness.targets.hstream import config_token
from harness.topology import ClusterSpec

pytestmark = pytest.mark.slow

TOKEN = "hstream:secret"


@pytest.fixture
def run_credential() -> Iterator[None]:
    before = credentials.run_credential()
    credentials.set_run_credential(TOKEN)
    try:
        yield
    finally:
        credentials.set_run_credential(before)


def test_credential_for_follows_the_target() -> None:
    assert credentials.credential_for(ClusterSpec()) is None
    assert credentials.credential_for(ClusterSpec(tokens=(TOKEN,))) == TOKEN
    real = ClusterSpec(tokens=(TOKEN,), target="hstream:hstreamdb/hstream:v0.20.3")
    assert credentials.credential_for(real) == config_token(TOKEN)  # base64, as hserver holds it


def test_channels_and_drivers_carry_the_run_credential(
    cluster_factory, run_credential, tmp_path
) -> None:
    cluster = cluster_factory(nodes=1, tokens=(TOKEN,), toxiproxy=False)
    [endpoint] = [url.removeprefix("hstream://") for url in cluster.client_urls()]

    with pytest.raises(grpc.RpcError) as refused:
        wire.stub(endpoint, credential=None).DescribeCluster(Empty(), timeout=10)
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED)

    assert wire.stub(endpoint).DescribeCluster(Empty(), timeout=10).serverNodes
    # The call's own authorization is sent as given, not replaced by the run's.
    with pytest.raises(grpc.RpcError):
        wire.stub(endpoint).DescribeCluster(
            Empty(), metadata=(("authorization", "Basic nope"),), timeout=10
        )

    history = History()
    raw = ClientDriver("raw", history=history, evidence_dir=tmp_path)
    try:
        assert raw.connect([endpoint]).ok
        assert raw.simple("create_stream", stream="with-token", shards=1).ok
        # A streaming call too: StreamingFetch must carry the token as well.
        assert raw.call("subscribe", subscription="sub-token", stream="with-token").ok
        assert raw.append("with-token", [{"payload_id": "p1"}]).ok
        fetched = raw.call("fetch", subscription="sub-token", consumer="c1", timeout_ms=3000)
        assert fetched.ok and len(fetched.value["records"]) == 1, fetched
    finally:
        raw.close()
    python = ClientDriver("python", history=history, evidence_dir=tmp_path)
    try:
        reply = python.connect([endpoint])
        assert reply.unsupported and "token" in (reply.error or ""), reply
    finally:
        python.close()
