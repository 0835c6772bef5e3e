"""How each official client behaves when nodes die, links misbehave, and other clients write.

Every test states the behaviour a correct client shows (the raw gRPC driver is the protocol
baseline); histories are judged by the same checkers as the chaos suites and saved under
reports/histories/ for each test.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from harness import wire
from harness.checkers import stream_set
from harness.checkers.result import Result
from harness.clients.driver import ClientDriver, raw_payload

PYTHON_ONE_ADDRESS = (
    "hstreamdb 0.5.0 takes a single bootstrap address (insecure_client(host, port)): with a "
    "dead first address it cannot connect at all"
)
PYTHON_STALE_LOOKUP = (
    "hstreamdb 0.5.0 caches shard and subscription owners forever and append() is not "
    "retried: once the owner died every later append/consume goes to the dead node"
)

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def batch_of(count: int, prefix: str) -> list[dict]:
    return [raw_payload(f"{prefix}-{next(_ids)}") for _ in range(count)]


def drain(baseline: ClientDriver, stream: str) -> None:
    """The final read: every shard from EARLIEST through the raw baseline, recorded."""
    shards = baseline.call("list_shards", stream=stream)
    assert shards.ok, f"list_shards({stream}) during drain: {shards.error}"
    for shard in shards.value["shards"]:
        reply = baseline.read_shard(stream, shard["shard_id"], final=True)
        assert reply.ok, f"drain of shard {shard['shard_id']}: {reply.error}"


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


@pytest.fixture
def stream(baseline: ClientDriver) -> str:
    name = unique("cb")
    reply = baseline.simple("create_stream", stream=name, shards=1, replication_factor=1)
    assert reply.ok, reply.error
    return name


@pytest.mark.client_deviation("python", PYTHON_ONE_ADDRESS)
def test_bootstrap_skips_dead_urls(client_name, drivers, endpoints):
    """Given dead addresses first, a client connects through the first live one."""
    dead = ["127.0.0.1:9", "127.0.0.1:1"]  # discard and tcpmux: nothing listens there
    driver = drivers(client_name)
    reply = driver.connect(dead + endpoints)
    assert reply.ok, f"{client_name} failed to bootstrap from {dead + endpoints}: {reply.error}"
    created = driver.simple("create_stream", stream=unique("boot"), shards=1)
    assert created.ok, f"after bootstrap, create_stream failed: {created.error}"


def appends_until(driver: ClientDriver, stream: str, deadline_s: float, prefix: str) -> int:
    """Append one-record batches until one is acknowledged or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if driver.append(stream, batch_of(1, prefix)).ok:
            return 1
        time.sleep(0.5)
    return 0


@pytest.mark.client_deviation("python", PYTHON_STALE_LOOKUP)
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_append_continues_after_owner_fails(
    fault, client, client_name, baseline, stream, cluster, history
):
    """After the shard owner is killed or paused, appends resume on the new owner once
    membership confirms it dead, and nothing acknowledged is lost."""
    for _ in range(5):
        assert client.append(stream, batch_of(4, "before")).ok
    shard_id, owner = shard_owner(cluster, baseline, stream)
    survivors = [n.id for n in cluster.nodes if n.id != owner]
    baseline.connect([str(cluster.node(n).client) for n in survivors])
    getattr(cluster, fault)(owner)
    try:
        # Detection (suspicion + confirmation) and dissemination take a few protocol periods
        # (see suites/membership for the bound); 30 s is far beyond it with test timings.
        resumed = appends_until(client, stream, 30, "after")
        drain(baseline, stream)
    finally:
        if fault == "pause":
            cluster.resume(owner)
        cluster.restart(owner)
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"
    assert resumed, (
        f"{client_name}: no append acknowledged in 30 s after node {owner} (owner of shard "
        f"{shard_id}) was {fault}ed; history: {history.path}"
    )


@pytest.mark.parametrize("toxic", ["latency", "timeout", "reset_peer"])
def test_client_path_toxics(toxic, client, client_name, baseline, stream, cluster, history):
    """Toxics on every node's client link: latency below the client's timeouts is invisible;
    timeouts and resets surface as errors (never as acknowledgements of lost records); once
    the toxic is gone appends succeed again and nothing acknowledged is lost."""
    attributes = {
        "latency": {"latency": 300, "jitter": 50},
        "timeout": {"timeout": 2000},
        "reset_peer": {"timeout": 0},
    }[toxic]
    proxies = [cluster.proxy(node.id, "client").handle() for node in cluster.nodes]
    for proxy in proxies:
        proxy.add_toxic(
            name=f"t-{toxic}", type=toxic, stream="downstream", toxicity=1.0, attributes=attributes
        )
    try:
        under = [client.append(stream, batch_of(2, f"under-{toxic}")) for _ in range(3)]
    finally:
        for proxy in proxies:
            proxy.destroy_toxic(f"t-{toxic}")
    if toxic == "latency":
        assert all(r.ok for r in under), (
            f"300 ms latency failed appends: {[r.error for r in under if not r.ok]}"
        )
    assert appends_until(client, stream, 20, "healed"), (
        f"{client_name}: no append succeeded within 20 s after the {toxic} toxic was removed"
    )
    drain(baseline, stream)
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"


def test_recovery_after_proxies_return(client, client_name, baseline, stream, cluster, history):
    """All client links down: appends fail or are indeterminate; back up: they succeed."""
    assert client.append(stream, batch_of(2, "up")).ok
    proxies = [cluster.proxy(node.id, "client").handle() for node in cluster.nodes]
    for proxy in proxies:
        proxy.disable()
    try:
        down = client.append(stream, batch_of(2, "down"))
        assert not down.ok, f"{client_name} acknowledged an append while every link was down"
    finally:
        for proxy in proxies:
            proxy.enable()
    assert appends_until(client, stream, 20, "back"), (
        f"{client_name}: no append succeeded within 20 s after the links came back"
    )
    drain(baseline, stream)
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"


@pytest.mark.client_deviation("python", PYTHON_STALE_LOOKUP)
def test_consumer_fails_over(client, client_name, baseline, stream, cluster, history):
    """When the subscription's owner dies, a consumer started again gets the rest from the
    new owner: every acknowledged record is delivered."""
    sub = unique("fo")
    assert client.subscribe(sub, stream, ack_timeout=3).ok
    written = 0
    for _ in range(4):
        assert client.append(stream, batch_of(5, "fo")).ok
        written += 5
    got = client.fetch(sub, "c1", max=written, timeout_ms=5000)
    owner_endpoint = baseline.call("describe_cluster")
    lookup = wire.stub(str(cluster.nodes[0].client)).LookupSubscription(
        wire.api.LookupSubscriptionRequest(subscriptionId=sub)
    )
    owner = node_of(cluster, wire.endpoint_of(lookup.serverNode))
    assert owner_endpoint.ok
    cluster.kill(owner)
    try:
        for _ in range(2):
            client.append(stream, batch_of(5, "fo-after"))
        delivered = len(got.value["records"]) if got.ok else 0
        deadline = time.monotonic() + 40
        acked = sum(1 for op in history if op.f == "append" and op.type == "ok")
        while delivered < acked and time.monotonic() < deadline:
            reply = client.fetch(sub, "c1", max=acked, timeout_ms=2000)
            if reply.ok:
                delivered += len(reply.value["records"])
            else:
                time.sleep(1)
    finally:
        cluster.restart(owner)
    assert delivered >= acked, (
        f"{client_name}: {delivered} of {acked} acknowledged records delivered after the "
        f"owner (node {owner}) of {sub} was killed; history: {history.path}"
    )
