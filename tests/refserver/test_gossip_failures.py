"""Failure detection with real member processes (`python -m refserver.gossip`).

Members are killed (SIGKILL), paused (SIGSTOP/SIGCONT, state kept, nothing answered) and
restarted with the same id; the test process reads every member's view through CliCluster
and checks the times against the bound GossipConfig.failure_detection_bound derives. The
seeded defects never-confirm and no-refute must visibly break the same scenarios.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from harness.protos import HStreamGossip_pb2, HStreamGossip_pb2_grpc
from refserver.gossip import GossipConfig, decode_view
from refserver.membership import MemberState, NodeAddress

pytestmark = pytest.mark.slow

PROBE_MS, RTT_MS, GOSSIP_MS, RECONNECT_MS = 300, 100, 200, 1000
# Python processes on a shared two-core machine are descheduled now and then; this is
# added to every protocol bound and reported with the measured time.
SCHEDULING_SLACK = 3.0
READY_TIMEOUT = 30.0

View = dict[int, tuple[MemberState, int]]


def config_for(size: int, suspicion_mult: int = 4) -> GossipConfig:
    """The settings the processes run with, to compute the bounds the test holds them to."""
    me = NodeAddress(1, "127.0.0.1", 0, "127.0.0.1", 1)
    return GossipConfig(
        self_node=me,
        seeds=[("127.0.0.1", 1)],
        probe_interval=PROBE_MS / 1000,
        roundtrip_timeout=RTT_MS / 1000,
        gossip_interval=GOSSIP_MS / 1000,
        suspicion_mult=suspicion_mult,
        reconnect_interval=RECONNECT_MS / 1000,
    )


@dataclass
class GossipProcesses:
    """Member processes on 127.0.0.<id>:<port>, node 1 the seed; stops all on close."""

    workdir: Path
    port: int
    flags: list[str] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    channels: dict[int, grpc.Channel] = field(default_factory=dict)
    restarts: int = 0

    def log_path(self, node_id: int, host: str | None = None) -> Path:
        suffix = f"-{host}" if host else ""
        return self.workdir / f"node-{node_id}{suffix}.log"

    def spawn(self, node_id: int, host: str | None = None) -> subprocess.Popen[bytes]:
        log_path = self.log_path(node_id, host)
        host = host or f"127.0.0.{node_id}"
        argv = [
            sys.executable, "-m", "refserver.gossip",
            "--server-id", str(node_id), "--address", host,
            "--internal-port", str(self.port), "--seed-nodes", f"127.0.0.1:{self.port}",
            "--probe-interval-ms", str(PROBE_MS), "--roundtrip-timeout-ms", str(RTT_MS),
            "--gossip-interval-ms", str(GOSSIP_MS), "--reconnect-interval-ms", str(RECONNECT_MS),
            "--join-timeout-ms", "15000", *self.flags,
        ]  # fmt: skip
        log = open(log_path, "ab")  # noqa: SIM115 - the child process owns it
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
        log.close()
        return process

    def wait_ready(self, node_id: int, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([process.stdout], [], [], 0.2)
            if readable:
                line = process.stdout.readline().decode()
                if line.startswith(f"gossip node {node_id} ready"):
                    return
            if process.poll() is not None:
                break
        pytest.fail(
            f"node {node_id} not ready within {READY_TIMEOUT} s (exit {process.poll()}); "
            f"log {self.log_path(node_id)}:\n{self.tail(node_id)}"
        )

    def start(self, *node_ids: int) -> None:
        spawned = {i: self.spawn(i) for i in node_ids}
        self.processes.update(spawned)
        for node_id, process in spawned.items():
            self.wait_ready(node_id, process)

    def kill(self, node_id: int) -> None:
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        channel = self.channels.pop(node_id, None)
        if channel is not None:
            channel.close()

    def pause(self, node_id: int) -> None:
        self.processes[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.processes[node_id].send_signal(signal.SIGCONT)

    def view(self, node_id: int) -> View:
        channel = self.channels.get(node_id)
        if channel is None:
            channel = grpc.insecure_channel(f"127.0.0.{node_id}:{self.port}")
            self.channels[node_id] = channel
        stub = HStreamGossip_pb2_grpc.HStreamGossipStub(channel)
        return decode_view(stub.CliCluster(HStreamGossip_pb2.Empty(), timeout=2))

    def views(self, node_ids: list[int]) -> dict[int, View]:
        return {i: self.view(i) for i in node_ids}

    def tail(self, node_id: int, lines: int = 15) -> str:
        path = self.log_path(node_id)
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def evidence(self) -> str:
        return "\n".join(
            f"--- {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in sorted(self.workdir.glob("node-*.log"))
        )

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
        self.processes.clear()


@pytest.fixture
def gossip_processes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., GossipProcesses]]:
    made: list[GossipProcesses] = []

    def make(port: int, flags: list[str] | None = None) -> GossipProcesses:
        cluster = GossipProcesses(tmp_path, port, list(flags or []))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def wait_for(
    cluster: GossipProcesses,
    observers: list[int],
    done: Callable[[dict[int, View]], bool],
    timeout: float,
    what: str,
    watch: Callable[[dict[int, View]], None] | None = None,
) -> float:
    """Poll the observers' views until `done`; seconds taken, or fail with the views."""
    started = time.monotonic()
    while True:
        views = cluster.views(observers)
        if watch is not None:
            watch(views)
        if done(views):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:.1f} s; views {views}\n{cluster.evidence()}")
        time.sleep(0.05)


def everyone_sees(member: int, state: MemberState) -> Callable[[dict[int, View]], bool]:
    return lambda views: all(v.get(member, (None, 0))[0] is state for v in views.values())


def anyone_sees(member: int, state: MemberState) -> Callable[[dict[int, View]], bool]:
    return lambda views: any(v.get(member, (None, 0))[0] is state for v in views.values())


def all_alive(ids: list[int]) -> Callable[[dict[int, View]], bool]:
    return lambda views: all(
        set(v) == set(ids) and all(s is MemberState.ALIVE for s, _ in v.values())
        for v in views.values()
    )


def never_dead(members: list[int], seen: list[str]) -> Callable[[dict[int, View]], None]:
    """Record every view that has one of `members` (all live) dead: a false confirmation."""

    def watch(views: dict[int, View]) -> None:
        for observer, view in views.items():
            for member in members:
                if view.get(member, (None, 0))[0] is MemberState.DEAD:
                    seen.append(f"node {observer} confirmed live node {member} dead: {view}")

    return watch


def test_killed_member_is_confirmed_dead_within_the_bound(gossip_processes) -> None:  # type: ignore[no-untyped-def]
    cluster = gossip_processes(17300)
    ids = [1, 2, 3, 4, 5]
    cluster.start(1)
    cluster.start(*ids[1:])
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 5 processes")

    survivors = [1, 2, 3, 5]
    false_alarms: list[str] = []
    cluster.kill(4)
    killed_at = time.monotonic()
    first_suspicion = wait_for(
        cluster,
        survivors,
        anyone_sees(4, MemberState.SUSPECT),
        30,
        "first suspicion of killed node 4",
    )
    bound = config_for(5).failure_detection_bound(5)
    wait_for(
        cluster,
        survivors,
        everyone_sees(4, MemberState.DEAD),
        bound + SCHEDULING_SLACK,
        "every survivor confirms node 4 dead",
        watch=never_dead(survivors, false_alarms),
    )
    took = time.monotonic() - killed_at
    assert not false_alarms, false_alarms
    assert took <= bound + SCHEDULING_SLACK, (took, bound)
    print(
        f"kill: first suspicion {first_suspicion:.2f} s, all dead {took:.2f} s "
        f"(bound {bound:.2f} s + slack {SCHEDULING_SLACK} s)"
    )


def test_never_confirm_defect_keeps_a_killed_member_in_every_view(gossip_processes) -> None:  # type: ignore[no-untyped-def]
    cluster = gossip_processes(17310, ["--defect", "never-confirm"])
    ids = [1, 2, 3, 4]
    cluster.start(1)
    cluster.start(*ids[1:])
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 4 processes")
    cluster.kill(4)
    survivors = [1, 2, 3]
    wait_for(cluster, survivors, anyone_sees(4, MemberState.SUSPECT), 30, "suspicion of node 4")
    time.sleep(config_for(4).failure_detection_bound(4) + SCHEDULING_SLACK)
    views = cluster.views(survivors)
    assert all(v[4][0] is not MemberState.DEAD for v in views.values()), (
        f"never-confirm should keep node 4 out of the dead state, views {views}"
    )
    assert all(v[4][0] is MemberState.SUSPECT for v in views.values()), views


def test_paused_member_refutes_the_suspicion_when_it_resumes(gossip_processes) -> None:  # type: ignore[no-untyped-def]
    # A long suspicion window (20 x 0.3 s) leaves time to resume before the Confirm.
    cluster = gossip_processes(17320, ["--suspicion-mult", "20"])
    ids = [1, 2, 3, 4]
    cluster.start(1)
    cluster.start(*ids[1:])
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 4 processes")
    incarnation_before = cluster.view(1)[4][1]
    survivors = [1, 2, 3]
    dead_reports: list[str] = []
    cluster.pause(4)
    wait_for(
        cluster,
        survivors,
        anyone_sees(4, MemberState.SUSPECT),
        15,
        "suspicion of paused node 4",
        watch=never_dead([4], dead_reports),
    )
    cluster.resume(4)
    took = wait_for(
        cluster,
        ids,
        all_alive(ids),
        10,
        "refutation after resuming node 4",
        watch=never_dead([4], dead_reports),
    )
    assert not dead_reports, dead_reports
    incarnations = {observer: view[4][1] for observer, view in cluster.views(ids).items()}
    assert all(i > incarnation_before for i in incarnations.values()), (
        f"node 4 should have refuted with a higher incarnation than {incarnation_before}: "
        f"{incarnations}"
    )
    print(f"pause: refuted {took:.2f} s after resuming")


def test_no_refute_defect_lets_a_paused_member_be_confirmed_dead(gossip_processes) -> None:  # type: ignore[no-untyped-def]
    cluster = gossip_processes(17330, ["--suspicion-mult", "20", "--defect", "no-refute"])
    ids = [1, 2, 3, 4]
    cluster.start(1)
    cluster.start(*ids[1:])
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 4 processes")
    survivors = [1, 2, 3]
    cluster.pause(4)
    wait_for(
        cluster, survivors, anyone_sees(4, MemberState.SUSPECT), 15, "suspicion of paused node 4"
    )
    cluster.resume(4)
    # the same schedule as the test above; without a refutation the suspicion runs out
    window = config_for(4, suspicion_mult=20).suspicion_timeout(4)
    wait_for(
        cluster,
        survivors,
        everyone_sees(4, MemberState.DEAD),
        window + config_for(4).failure_detection_bound(4) + SCHEDULING_SLACK,
        "no-refute: live node 4 confirmed dead",
    )
    time.sleep(2 * RECONNECT_MS / 1000)
    views = cluster.views(survivors)
    assert all(v[4][0] is MemberState.DEAD for v in views.values()), (
        f"with no-refute the reconnect path cannot revive node 4 either: {views}"
    )


def test_member_confirmed_dead_after_a_long_pause_rejoins_through_reconnect(
    gossip_processes,
) -> None:  # type: ignore[no-untyped-def]
    cluster = gossip_processes(17340)
    ids = [1, 2, 3, 4]
    cluster.start(1)
    cluster.start(*ids[1:])
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 4 processes")
    survivors = [1, 2, 3]
    cluster.pause(4)
    bound = config_for(4).failure_detection_bound(4)
    wait_for(
        cluster,
        survivors,
        everyone_sees(4, MemberState.DEAD),
        bound + SCHEDULING_SLACK,
        "paused node 4 confirmed dead",
    )
    cluster.resume(4)
    took = wait_for(
        cluster,
        ids,
        all_alive(ids),
        2 * RECONNECT_MS / 1000 + bound + SCHEDULING_SLACK,
        "views reconverge after node 4 comes back",
    )
    print(f"reconnect: all alive {took:.2f} s after resuming")


@pytest.mark.parametrize(
    "member, wait_until_dead, port",
    [(3, False, 17350), (3, True, 17370), (1, False, 17380), (1, True, 17390)],
    ids=["member-at-once", "member-after-confirm", "seed-at-once", "seed-after-confirm"],
)
def test_restarted_member_with_the_same_id_is_accepted_back(
    gossip_processes, member: int, wait_until_dead: bool, port: int
) -> None:  # type: ignore[no-untyped-def]
    # A restarted non-seed joins through the seed; the restarted seed (1) is a one-node
    # cluster at first and learns the others from their pings.
    cluster = gossip_processes(port)
    ids = [1, 2, 3]
    others = [i for i in ids if i != member]
    cluster.start(1)
    cluster.start(2, 3)
    wait_for(cluster, ids, all_alive(ids), 10, "bootstrap of 3 processes")
    before = cluster.view(others[0])[member][1]
    cluster.kill(member)
    if wait_until_dead:
        bound = config_for(3).failure_detection_bound(3)
        wait_for(
            cluster,
            others,
            everyone_sees(member, MemberState.DEAD),
            bound + SCHEDULING_SLACK,
            f"killed node {member} confirmed dead",
        )
    cluster.start(member)
    # back in every view, each knowing the new life's higher incarnation
    wait_for(
        cluster,
        ids,
        lambda views: all_alive(ids)(views) and all(v[member][1] > before for v in views.values()),
        10,
        f"restarted node {member} alive with an incarnation above {before} in every view",
    )


def test_duplicate_id_from_another_address_exits_with_one_clear_line(gossip_processes) -> None:  # type: ignore[no-untyped-def]
    cluster = gossip_processes(17360)
    cluster.start(1)
    cluster.start(2)
    impostor = cluster.spawn(2, host="127.0.0.9")
    try:
        code = impostor.wait(20)
    finally:
        if impostor.poll() is None:
            impostor.kill()
            impostor.wait(5)
        assert impostor.stdout is not None
        impostor.stdout.close()
    log = cluster.log_path(2, "127.0.0.9").read_text()
    assert code == 2, (code, log)
    errors = [line for line in log.splitlines() if line.startswith("gossip node 2:")]
    assert len(errors) == 1 and "a live member already has this id" in errors[0], log
    assert "Traceback" not in log, log
    assert cluster.view(1)[2][0] is MemberState.ALIVE
