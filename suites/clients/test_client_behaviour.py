"""How each official client behaves when nodes die, links misbehave, and other clients write.

Every test states the behaviour a correct client shows (the raw gRPC driver is the protocol
baseline); histories are judged by the same checkers as the chaos suites and saved under
reports/histories/ for each test.
"""

from __future__ import annotations

import time

import pytest
from HStream.Server import HStreamApi_pb2 as api
from HStream.Server import HStreamApi_pb2_grpc as api_grpc

from harness import credentials, wire
from harness.checkers import subscription
from harness.clients.driver import ClientDriver, Reply
from harness.nemesis import FAULTS, Fault

from .findings import (
    ERLANG_INTERNAL_ERROR_WHEN_DOWN,
    ERLANG_TIMEOUT_WITHOUT_STATUS,
    PYTHON_LOSES_NODES,
    PYTHON_NO_CALL_DEADLINE,
    PYTHON_ONE_ADDRESS,
    PYTHON_STALE_LOOKUP,
)
from .owner_failure import (
    FAST_GOSSIP,
    SCHEDULING_SLACK_S,
    DeathWatch,
    confirmation_bound_s,
)
from .workload import (
    DEAD_OWNER_CALLS_ALLOWED,
    RECOVERY_BOUND_S,
    appends_until,
    batch_of,
    drain,
    final_read_error,
    judge,
    node_of,
    recovers_from_dead_owner,
    shard_owner,
    unique,
)

pytestmark = pytest.mark.cluster(gossip=FAST_GOSSIP)

FAULTED = {"kill": "killed", "pause": "paused"}

ACK_TIMEOUT_S = 3


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


@pytest.mark.nemesis
@pytest.mark.client_deviation("python", PYTHON_STALE_LOOKUP)
@pytest.mark.parametrize(
    "fault",
    [
        "kill",
        pytest.param(
            "pause", marks=pytest.mark.client_deviation("python", PYTHON_NO_CALL_DEADLINE)
        ),
    ],
)
def test_append_continues_after_owner_fails(
    fault, client, client_name, baseline, stream, cluster, nemesis, history, evidence
):
    """After the shard owner is killed or paused, appends resume on the new owner once
    membership confirms it dead, and nothing acknowledged is lost."""
    for _ in range(5):
        assert client.append(stream, batch_of(4, "before")).ok
    shard_id, owner = shard_owner(cluster, baseline, stream)
    survivors = {n.id: str(n.client) for n in cluster.nodes if n.id != owner}
    assert baseline.connect(list(survivors.values())).ok
    watch = DeathWatch(owner, survivors, confirmation_bound_s(cluster.settings, 3))
    failure = FAULTS[f"{fault}-one"].on(owner)
    nemesis.invoke(failure, "start")
    try:
        # The client keeps appending while membership decides, so it meets the failed owner
        # (and caches whatever the lookups say in the meantime).
        during = 0
        while not watch.confirmed():
            assert not watch.expired, watch.failure()
            client.append(stream, batch_of(1, "during"))
            during += 1
            time.sleep(0.2)  # a client retrying at its own pace, not a flood of history
        last, evident = recovers_from_dead_owner(
            client, stream, RECOVERY_BOUND_S, "after", str(cluster.node(owner).client)
        )
        read_error = final_read_error(baseline, stream)
    finally:
        nemesis.invoke(failure, "stop")
        if fault == "pause":
            # As after a kill, the next test meets a freshly started owner (the survivors
            # confirmed this one dead while it was stopped).
            nemesis.invoke(FAULTS["restart-one"].on(owner))
    evidence.figures(
        "owner failure",
        {"confirmed_dead_after_s": watch.confirmed_after_s, "appends_while_deciding": during},
    )
    assert last.ok, (
        f"{client_name}: {evident or f'no append acknowledged within {RECOVERY_BOUND_S:.0f} s'}"
        " after every "
        f"survivor confirmed node {owner} ({cluster.node(owner).client}, owner of shard "
        f"{shard_id}) dead, {watch.confirmed_after_s} s after it was {FAULTED[fault]}; the "
        f"client's last error: {last.status}: {last.error}; history: {history.path}"
    )
    assert read_error is None, f"{read_error} (history: {history.path})"
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"


# A transport fault leaves the outcome unknown (the request may have landed): a client must
# say so with the transport's own status, so an application can tell "retry and dedupe"
# from "the server said no".
TRANSPORT_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@pytest.mark.nemesis
@pytest.mark.parametrize(
    "toxic",
    [
        "latency",
        pytest.param(
            "timeout",
            marks=[
                pytest.mark.client_deviation("python", PYTHON_LOSES_NODES),
                pytest.mark.client_deviation("erlang", ERLANG_TIMEOUT_WITHOUT_STATUS),
            ],
        ),
        pytest.param(
            "reset_peer",
            marks=[
                pytest.mark.client_deviation("python", PYTHON_LOSES_NODES),
                pytest.mark.client_deviation("erlang", ERLANG_TIMEOUT_WITHOUT_STATUS),
            ],
        ),
    ],
)
def test_client_path_toxics(
    toxic, client, client_name, baseline, stream, cluster, nemesis, history
):
    """Toxics on every node's client link: latency below the client's timeouts is invisible;
    timeouts and resets surface as indeterminate errors with the transport's gRPC status
    (never as acknowledgements); once the toxic is gone appends succeed again and nothing
    acknowledged is lost."""
    attributes = {
        "latency": {"latency": 300, "jitter": 50},
        "timeout": {"timeout": 2000},
        "reset_peer": {"timeout": 0},
    }[toxic]
    every_link = Fault("toxic", target="all", link="client", toxic=toxic, attributes=attributes)
    instance = every_link.on(*(node.id for node in cluster.nodes))
    nemesis.invoke(instance, "start")
    try:
        under = [client.append(stream, batch_of(2, f"under-{toxic}")) for _ in range(3)]
    finally:
        nemesis.invoke(instance, "stop")
    if toxic == "latency":
        assert all(r.ok for r in under), (
            f"300 ms latency failed appends: {[r.error for r in under if not r.ok]}"
        )
    healed = appends_until(client, stream, RECOVERY_BOUND_S, "healed")
    assert healed.ok, (
        f"{client_name}: no append succeeded within {RECOVERY_BOUND_S:.0f} s after the {toxic} "
        f"toxic was removed; last error: {healed.status}: {healed.error}"
    )
    drain(baseline, stream)
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"
    if toxic != "latency":
        wrong = [r for r in under if r.type != "info" or r.status not in TRANSPORT_STATUSES]
        assert not wrong, (
            f"{client_name}: under the {toxic} toxic every append must be indeterminate with "
            f"status {' or '.join(TRANSPORT_STATUSES)}; got "
            f"{[(r.type, r.status, r.error) for r in wrong]} (history: {history.path})"
        )


@pytest.mark.nemesis
@pytest.mark.client_deviation("erlang", ERLANG_INTERNAL_ERROR_WHEN_DOWN)
def test_recovery_after_proxies_return(
    client, client_name, baseline, stream, cluster, nemesis, history
):
    """All client links down: appends fail or are indeterminate; back up: they succeed."""
    assert client.append(stream, batch_of(2, "up")).ok
    links_down = Fault("toxic", target="all", link="client", toxic="down")
    instance = links_down.on(*(node.id for node in cluster.nodes))
    nemesis.invoke(instance, "start")
    try:
        down = client.append(stream, batch_of(2, "down"))
        assert down.type == "info" and down.status in TRANSPORT_STATUSES, (
            f"{client_name}: an append while every link was down answered {down.type} "
            f"{down.status}: {down.error}; expected indeterminate with status "
            f"{' or '.join(TRANSPORT_STATUSES)}"
        )
    finally:
        nemesis.invoke(instance, "stop")
    back = appends_until(client, stream, RECOVERY_BOUND_S, "back")
    assert back.ok, (
        f"{client_name}: no append succeeded within {RECOVERY_BOUND_S:.0f} s after the links "
        f"came back; last error: {back.status}: {back.error}"
    )
    drain(baseline, stream)
    result = judge(history, stream)
    assert result.valid is True, f"{result.summary()} (history: {history.path})"


def acknowledged(history, stream: str) -> set[str]:
    return {
        op.value["payload_id"]
        for op in history
        if op.f == "append" and op.type == "ok" and op.value.get("stream") == stream
    }


def delivered(history, subscription: str) -> set[str]:
    return {
        record["payload_id"]
        for op in history
        if op.f == "fetch" and op.type == "ok" and op.value.get("subscription") == subscription
        for record in op.value.get("records", [])
    }


def fetch_until_delivered(
    client: ClientDriver, subscription: str, stream: str, history, deadline_s: float,
    dead: str | None = None,
) -> tuple[set[str], Reply | None]:
    """Fetch (and ack) until every acknowledged append to `stream` was delivered, or the
    deadline passes: (what is still missing, the last fetch reply). With `dead` (a confirmed
    dead owner's address), it also ends once more fetches than a client may lose to it
    (DEAD_OWNER_CALLS_ALLOWED) failed against it: the client is evidently not failing over."""
    deadline = time.monotonic() + deadline_s
    last = None
    at_dead = 0
    while True:
        missing = acknowledged(history, stream) - delivered(history, subscription)
        if not missing or time.monotonic() >= deadline or at_dead > DEAD_OWNER_CALLS_ALLOWED:
            return missing, last
        last = client.fetch(subscription, "c1", max=100, timeout_ms=1000)
        if not last.ok:
            if dead is not None and dead in (last.error or ""):
                at_dead += 1
            time.sleep(0.5)


def subscription_owner(endpoint: str, subscription: str) -> str:
    with credentials.channel(endpoint) as channel:
        answer = api_grpc.HStreamApiStub(channel).LookupSubscription(
            api.LookupSubscriptionRequest(subscriptionId=subscription), timeout=10
        )
    return wire.endpoint_of(answer.serverNode)


@pytest.mark.nemesis
@pytest.mark.client_deviation("python", PYTHON_STALE_LOOKUP)
def test_consumer_fails_over(
    client, client_name, baseline, stream, cluster, nemesis, history, evidence
):
    """When the subscription's owner dies, a consumer started again gets the rest from the
    new owner once membership confirms the old one dead: every acknowledged record,
    written before or after the failure, is delivered."""
    sub = unique("fo")
    assert client.subscribe(sub, stream, ack_timeout=ACK_TIMEOUT_S).ok
    for _ in range(4):
        assert client.append(stream, batch_of(5, "fo")).ok
    # A consumer is assigned its shards within the server's 1 s assignment period.
    missing, last = fetch_until_delivered(client, sub, stream, history, SCHEDULING_SLACK_S)
    assert not missing, (
        f"{client_name}: {len(missing)} records not delivered before any fault; last fetch: "
        f"{last and (last.status, last.error)}; history: {history.path}"
    )
    owner = node_of(cluster, subscription_owner(str(cluster.nodes[0].client), sub))
    survivors = {n.id: str(n.client) for n in cluster.nodes if n.id != owner}
    assert baseline.connect(list(survivors.values())).ok
    watch = DeathWatch(owner, survivors, confirmation_bound_s(cluster.settings, 3))
    kill = FAULTS["kill-one"].on(owner)
    nemesis.invoke(kill, "start")
    try:
        watch.wait()
        for _ in range(2):
            written = baseline.append(stream, batch_of(5, "fo-after"))
            if not written.ok:  # the shard may have had the same owner: one re-lookup
                written = baseline.append(stream, batch_of(5, "fo-after"))
            assert written.ok, (
                f"the raw baseline could not append after every survivor confirmed node "
                f"{owner} dead: {written.status}: {written.error}; history: {history.path}"
            )
        drain = history.invoke("checker", "drain", {"subscription": sub})
        # The restarted consumer reaches the new owner after at most one call to the dead
        # one; unacked records come again within the ack timeout.
        missing, last = fetch_until_delivered(
            client, sub, stream, history, RECOVERY_BOUND_S + ACK_TIMEOUT_S,
            dead=str(cluster.node(owner).client),
        )
        history.ok(drain)
    finally:
        nemesis.invoke(kill, "stop")
    result = subscription.check(
        history,
        select=lambda op: (
            not isinstance(op.value, dict)
            or op.value.get("subscription", sub) == sub
            and op.value.get("stream", stream) == stream
        ),
    )
    evidence.result("subscription", result)
    evidence.figures("owner failure", {"confirmed_dead_after_s": watch.confirmed_after_s})
    assert not missing and result.counts["undelivered"] == 0, (
        f"{client_name}: {len(missing)} of {len(acknowledged(history, stream))} acknowledged "
        f"records not delivered within {RECOVERY_BOUND_S + ACK_TIMEOUT_S:.0f} s after every "
        f"survivor confirmed node {owner} (owner of {sub}) dead; the client's last error: "
        f"{last and (last.status, last.error)}; {result.summary()}; history: {history.path}"
    )
