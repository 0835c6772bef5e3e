"""Gossip behaviours of profile hstream-0.20 against the protocol profile, on real
`python -m refserver --profile NAME` processes (test_profile_cluster launches them).

Each test runs once per profile and shows the real server's behaviour under hstream-0.20
and the protocol-correct one under protocol: confirmation after one probe interval,
retransmissions 4*ceil(ln(n+2)), alive-only member lists, DuplicateNodeId on a too-early
restart (after the ready line), and `server status` showing the asking node Running.
Where the test plays a member itself, it speaks HStreamGossip to the node's gossip port
with made-up members whose addresses nobody listens on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from HStream.Server import HStreamApi_pb2 as api
from refcluster_launcher import Proc
from test_profile_cluster import (
    NO_ROUNDS,
    ProfileCluster,
    free_port,
    node_states,
    profile_cluster,
    running_store,
    wait_until,
)

from harness.protos import HStreamGossip_pb2
from refserver.gossip import wire
from refserver.membership import NodeAddress

pytestmark = pytest.mark.slow

# Python processes on a shared two-core machine are descheduled now and then; added to
# every protocol bound and reported with the measured time.
SCHEDULING_SLACK = 3.0
FAKE_HOST = "127.0.0.59"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    with running_store(tmp_path_factory.mktemp("profile-gossip-store")) as found:
        yield found


def fake_member(member_id: int) -> NodeAddress:
    """A member whose addresses nobody listens on (the test speaks for it)."""
    return NodeAddress(member_id, FAKE_HOST, 1, FAKE_HOST, free_port(FAKE_HOST))


def join(cluster: ProfileCluster, node_id: int, member: NodeAddress) -> list[int]:
    """SendJoin for `member` through node `node_id`; the ids of the JoinResp members."""
    request = HStreamGossip_pb2.JoinReq(new=wire.to_server_node(member))
    answer = cluster.gossip(cluster.nodes[node_id]).SendJoin(request, timeout=5)
    return [m.id for m in answer.members]


@pytest.mark.parametrize(
    "profile, flags, confirmed",
    [
        ("protocol", [], False),
        ("hstream-0.20", [], True),
        ("hstream-0.20", ["--defect", "never-confirm"], False),
    ],
    ids=["protocol", "hstream-0.20", "hstream-0.20+never-confirm"],
)
def test_killed_member_is_confirmed_after_one_probe_interval(
    tmp_path: Path, store: tuple[Proc, int], profile: str, flags: list[str], confirmed: bool
) -> None:
    # Protocol: suspicion lasts 20 x 1 s, far beyond the window watched here. hstream-0.20:
    # node 1's next probe of node 2 starts within one interval and confirms at its end.
    probe_s = 1.0
    extra = ["--probe-interval-ms", "1000", "--roundtrip-timeout-ms", "300"]
    extra += ["--suspicion-mult", "20", *flags]
    window = 2 * probe_s + SCHEDULING_SLACK
    with profile_cluster(tmp_path, profile, store) as cluster:
        one = cluster.start(1, extra=extra)
        two = cluster.start(2, extra=extra)
        stub = cluster.api(one)
        wait_until(
            lambda: node_states(stub) == {1: "Running", 2: "Running"},
            15,
            "node 1 sees both nodes running",
            cluster.logs,
        )
        two.proc.kill()
        killed = time.monotonic()
        seen: dict[int, str] = {}
        dead_after = None
        while time.monotonic() - killed < window:
            seen = node_states(stub)
            if seen.get(2) == "Dead":
                dead_after = time.monotonic() - killed
                break
            time.sleep(0.05)
        if confirmed:
            assert dead_after is not None, (
                f"{profile}: node 2 not confirmed dead within {window:.1f} s "
                f"(2 probe intervals + slack); DescribeCluster {seen}; logs {cluster.logs()}"
            )
            print(f"{profile}: confirmed dead {dead_after:.2f} s after the kill")
        else:
            assert dead_after is None, (
                f"{profile} {flags}: node 2 confirmed dead after {dead_after:.2f} s, "
                f"before any suspicion timeout; logs {cluster.logs()}"
            )
            # suspected: in neither list of DescribeCluster, and not dead
            assert 2 not in seen, f"node 2 should be suspected, not {seen.get(2)}"
    if not confirmed:
        print(f"{profile} {flags}: still suspected, not dead, {window:.1f} s after the kill")


@pytest.mark.parametrize("profile, limit", [("protocol", 4), ("hstream-0.20", 8)])
def test_retransmit_limit(
    tmp_path: Path, store: tuple[Proc, int], profile: str, limit: int
) -> None:
    # One other alive member (n = 1): protocol 4*ceil(log10(cluster size 2 + 1)) = 4,
    # hstream-0.20 4*ceil(ln(1 + 2)) = 8. Nothing but the test's pings carries the
    # event: the node runs no probe and no gossip round meanwhile.
    with profile_cluster(tmp_path, profile, store) as cluster:
        one = cluster.start(1, extra=NO_ROUNDS)
        join(cluster, 1, fake_member(98))
        gossip = cluster.gossip(one)
        event = wire.event_message("profile-retransmit", 1, b"count me")
        gossip.SendGossip(HStreamGossip_pb2.Gossip(msg=[event]), timeout=5)
        carried = 0
        for _ in range(3 * limit):
            ack = gossip.SendPing(HStreamGossip_pb2.Ping(), timeout=5)
            carried += any(
                m.WhichOneof("content") == "event" and m.event.name == "profile-retransmit"
                for m in ack.msg
            )
    assert carried == limit, f"{profile}: the event rode on {carried} acks, expected {limit}"


@pytest.mark.parametrize("profile, listed", [("protocol", [1, 97, 98]), ("hstream-0.20", [1, 97])])
def test_join_answer_lists_alive_members_only(
    tmp_path: Path, store: tuple[Proc, int], profile: str, listed: list[int]
) -> None:
    # Member 98 joins, then is suspected (a Suspect gossiped to the node); a later joiner
    # 97 gets the member list. Its suspicion lasts (no probe, 20 x 60 s suspicion timeout).
    with profile_cluster(tmp_path, profile, store) as cluster:
        one = cluster.start(1, extra=[*NO_ROUNDS, "--suspicion-mult", "20"])
        suspect = fake_member(98)
        join(cluster, 1, suspect)
        claim = wire.state_message("suspect", 0, suspect, suspect)
        cluster.gossip(one).SendGossip(HStreamGossip_pb2.Gossip(msg=[claim]), timeout=5)
        members = join(cluster, 1, fake_member(97))
        states = node_states(cluster.api(one))
    assert sorted(members) == listed, f"{profile}: JoinResp members {members}"
    assert 98 not in states, f"a suspect is in neither DescribeCluster list: {states}"


@pytest.mark.parametrize("profile", ["protocol", "hstream-0.20"])
def test_restart_before_the_old_life_is_confirmed_dead(
    tmp_path: Path, store: tuple[Proc, int], profile: str
) -> None:
    # Node 1 holds node 2 alive: no probe runs during the test, so nobody suspects the
    # killed life before the new one joins through node 1 from the same address.
    extra = ["--probe-interval-ms", "60000", "--roundtrip-timeout-ms", "500"]
    with profile_cluster(tmp_path, profile, store) as cluster:
        one = cluster.start(1, extra=extra)
        two = cluster.start(2, extra=extra)
        stub = cluster.api(one)
        wait_until(
            lambda: node_states(stub) == {1: "Running", 2: "Running"},
            15,
            "node 1 sees both nodes running",
            cluster.logs,
        )
        two.proc.kill()
        first_life = len(two.proc.log())
        two.proc.start()
        process = two.proc.process
        assert process is not None
        if profile == "protocol":
            two.proc.wait_ready(occurrence=2)
            time.sleep(1.0)
            assert process.poll() is None, f"restarted node 2 exited: {two.proc.log()[-2000:]}"
            assert node_states(stub) == {1: "Running", 2: "Running"}
            assert "DuplicateNodeId" not in two.proc.log()[first_life:]
            return
        try:
            code = process.wait(timeout=30)
        except Exception:
            pytest.fail(f"restarted node 2 still runs; log {two.proc.log_path}")
        second = two.proc.log()[first_life:]
        assert code != 0, second
        ready = second.find("Server is started on port")
        refused = second.find("DuplicateNodeId")
        assert 0 <= ready < refused, (
            f"expected the ready line, then DuplicateNodeId (exit {code}):\n{second[-3000:]}"
        )
        assert "DuplicateNodeId" in one.proc.log(), "the seed logs the refusal too"


@pytest.mark.parametrize(
    "profile, own_state", [("protocol", "Starting"), ("hstream-0.20", "Running")]
)
def test_status_table_shows_the_asking_node(
    tmp_path: Path, store: tuple[Proc, int], profile: str, own_state: str
) -> None:
    # Two seeds, the other never started: the node waits for `server init`, not ready.
    nobody = f"{FAKE_HOST}:{free_port(FAKE_HOST)}"
    with profile_cluster(tmp_path, profile, store) as cluster:
        one = cluster.start(1, seeds=f"{{self}},{nobody}")
        stub = cluster.api(one)

        def admin(command: str) -> dict[str, object]:
            request = api.AdminCommandRequest(command=command)
            return json.loads(stub.SendAdminCommand(request, timeout=5).result)

        status = admin("server status")
        ready = admin("server ready")
        described = node_states(stub)
    rows = status["content"]["rows"]  # type: ignore[index]
    assert [row[:2] for row in rows] == [["1", own_state]], f"{profile}: status {status}"
    assert ready["type"] == "error", f"the node is not ready: {ready}"
    assert described == {1: "Starting"}, f"DescribeCluster is the same in both: {described}"
