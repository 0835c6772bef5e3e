"""Clock faults on a real 2-node reference cluster (local backend) under the clock layer.

Each mode is measured doing what it says, twice over: by the node process itself (the
wall clock it stamps a new stream's creationTime with, its monotonic uptime in
DescribeCluster) and by the measurement the nemesis records in the history (a process
under the same layer and spec file). Node 2 is never touched: the layer is per node.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness.clocklayer import ensure_library_here
from harness.cluster import Cluster, UnsupportedFault
from harness.debian import ToolMissing
from harness.history import History, history_path
from harness.nemesis import FAULTS, Fault, Nemesis, NemesisError, Schedule, generate_schedule
from harness.nemesis.clock import RATE_TICK_S, Clock, rate_plan, strobe_plan
from harness.nemesis.faults import CLOCKS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(
        nodes=2, backend="local", target="reference", defects=(), clock_faults=True
    ),
]

# How far the node's own stamp may be from the offset set: the stamp is whole milliseconds
# taken somewhere between our two true-time reads around the call, on a loaded machine.
NODE_TOLERANCE_S = 1.0
# The recorded measurement brackets one `date` between two true-time reads on the host.
MEASURE_TOLERANCE_S = 0.3
RATE_WINDOW_S = 3.0  # true seconds a rate fault runs while we watch its drift
RATE_TOLERANCE_S = 0.5  # on the drift over the window (steps of RATE_TICK_S, exec latency)


def node_clock_offset(cluster: Cluster, n: int, name: str) -> float:
    """Node n's wall clock minus true time, as the node itself stamps a new stream."""
    with grpc.insecure_channel(str(cluster.node(n).direct_client)) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        before = time.time()
        reply = stub.CreateStream(
            HStreamApi_pb2.Stream(streamName=name, replicationFactor=1, shardCount=1),
            timeout=10,
        )
        after = time.time()
    stamp = reply.creationTime.seconds + reply.creationTime.nanos / 1e9
    return stamp - (before + after) / 2


def node_uptime(cluster: Cluster, n: int) -> int:
    """DescribeCluster's clusterUpTime on node n: whole seconds of its monotonic clock."""
    with grpc.insecure_channel(str(cluster.node(n).direct_client)) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        return int(stub.DescribeCluster(empty_pb2.Empty(), timeout=10).clusterUpTime)


@pytest.fixture(scope="module", autouse=True)
def libfaketime() -> None:
    """This machine's nodes need the library: installed on first use, else skipped naming
    the command."""
    try:
        ensure_library_here(progress=lambda line: None)
    except ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def nemesis(cluster: Cluster, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    history = History(history_path(request.node.nodeid))
    nemesis = Nemesis(cluster, history)
    try:
        yield nemesis
    finally:
        nemesis.teardown()
        history.close()


def recorded(op_value: dict, n: int) -> dict:  # type: ignore[type-arg]
    return op_value["clock"][str(n)]


def test_offset_is_seen_by_the_node_and_recorded(cluster: Cluster, nemesis: Nemesis) -> None:
    uptime_before = node_uptime(cluster, 1)
    began = time.monotonic()
    instance = FAULTS["clock-offset-ahead"].on(1)
    done = nemesis.invoke(instance, "start")
    assert done is not None and done.type == "ok" and done.value["down"] == []
    clock = recorded(done.value, 1)
    assert clock["set"] == 30.0
    assert abs(clock["before"]["offset"]) < MEASURE_TOLERANCE_S, clock
    assert abs(clock["after"]["offset"] - 30.0) < MEASURE_TOLERANCE_S, clock
    assert clock["after"]["error"] < MEASURE_TOLERANCE_S

    # The node process itself: its wall clock 30 s ahead, its monotonic clock untouched.
    assert abs(node_clock_offset(cluster, 1, "clock-offset-1") - 30.0) < NODE_TOLERANCE_S
    assert abs(node_clock_offset(cluster, 2, "clock-offset-2")) < NODE_TOLERANCE_S
    elapsed = time.monotonic() - began
    assert uptime_before <= node_uptime(cluster, 1) <= uptime_before + elapsed + 2

    done = nemesis.invoke(instance, "stop")
    assert done is not None
    assert abs(recorded(done.value, 1)["after"]["offset"]) < MEASURE_TOLERANCE_S
    assert abs(node_clock_offset(cluster, 1, "clock-offset-3")) < NODE_TOLERANCE_S


def test_bumps_add_up_and_stop_jumps_back(cluster: Cluster, nemesis: Nemesis) -> None:
    back = FAULTS["clock-bump-back"].on(1)
    forward_twice = Fault("clock", clock="bump", attributes={"delta_ms": 45_000}).on(1)
    done = nemesis.invoke(back, "start")
    assert done is not None and abs(recorded(done.value, 1)["after"]["offset"] + 30) < 0.3
    assert abs(node_clock_offset(cluster, 1, "clock-bump-1") + 30.0) < NODE_TOLERANCE_S
    done = nemesis.invoke(forward_twice, "start")  # from -30 s: +15 s
    assert done is not None and abs(recorded(done.value, 1)["after"]["offset"] - 15) < 0.3
    assert abs(node_clock_offset(cluster, 1, "clock-bump-2") - 15.0) < NODE_TOLERANCE_S
    nemesis.invoke(forward_twice, "stop")
    done = nemesis.invoke(back, "stop")
    assert done is not None and abs(recorded(done.value, 1)["after"]["offset"]) < 0.3


def test_strobe_flips_then_settles(cluster: Cluster, nemesis: Nemesis) -> None:
    period_ms, duration_ms = 300, 3_000
    strobe = Fault("clock", clock="strobe", attributes={
        "delta_ms": 20_000, "period_ms": period_ms, "duration_ms": duration_ms}).on(1)
    clock = Clock()
    began = time.monotonic()
    nemesis.invoke(strobe, "start")
    seen: list[float] = []
    while time.monotonic() - began < duration_ms / 1000 - 0.5:
        reading = clock.measure(nemesis.ctx, 1)
        seen.append(reading["offset"])
        time.sleep(0.07)
    ahead = sum(1 for s in seen if abs(s - 20.0) < MEASURE_TOLERANCE_S)
    true = sum(1 for s in seen if abs(s) < MEASURE_TOLERANCE_S)
    assert ahead >= 3 and true >= 3 and ahead + true == len(seen), seen
    time.sleep(max(0.0, duration_ms / 1000 + 0.5 - (time.monotonic() - began)))
    assert abs(clock.measure(nemesis.ctx, 1)["offset"]) < MEASURE_TOLERANCE_S  # settled
    done = nemesis.invoke(strobe, "stop")
    assert done is not None and abs(recorded(done.value, 1)["after"]["offset"]) < 0.3


@pytest.mark.parametrize("permille", [1_500, 500])
def test_rate_drifts_at_its_rate(cluster: Cluster, nemesis: Nemesis, permille: int) -> None:
    rate = Fault("clock", clock="rate", attributes={"rate_permille": permille}).on(1)
    clock = Clock()
    nemesis.invoke(rate, "start")
    first, t0 = clock.measure(nemesis.ctx, 1)["offset"], time.monotonic()
    time.sleep(RATE_WINDOW_S)
    last, t1 = clock.measure(nemesis.ctx, 1)["offset"], time.monotonic()
    expected = (t1 - t0) * (permille / 1000 - 1)
    assert abs((last - first) - expected) < RATE_TOLERANCE_S, (first, last, expected)
    # The node process itself has drifted as much.
    node = node_clock_offset(cluster, 1, f"clock-rate-{permille}")
    assert abs(node - clock.measure(nemesis.ctx, 1)["offset"]) < NODE_TOLERANCE_S
    done = nemesis.invoke(rate, "stop")
    assert done is not None and abs(recorded(done.value, 1)["after"]["offset"]) < 0.3


def test_heal_restores_true_time_and_records_it(cluster: Cluster, nemesis: Nemesis) -> None:
    nemesis.invoke(FAULTS["clock-offset-behind"].on(1, 2), "start")
    nemesis.invoke(FAULTS["clock-rate-fast"].on(2), "start")
    done = nemesis.heal()
    assert done is not None and done.type == "ok"
    for n in (1, 2):
        assert abs(done.value["clock"][str(n)]["after"]["offset"]) < MEASURE_TOLERANCE_S
        assert abs(node_clock_offset(cluster, n, f"clock-heal-{n}")) < NODE_TOLERANCE_S


def test_catalogue_and_bad_input() -> None:
    assert {f.clock for f in FAULTS.values() if f.kind == "clock"} == set(CLOCKS)
    with pytest.raises(Exception, match="clock one of offset, bump, strobe, rate"):
        Fault("clock", clock="wobble")


def test_refused_without_the_layer(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    plain = cluster_factory(nodes=1, clock_faults=False, toxiproxy=False)
    nemesis = Nemesis(plain)
    with pytest.raises(UnsupportedFault, match="without the clock layer; start it with "
                                                "clock_faults"):
        nemesis.invoke(FAULTS["clock-bump-forward"].on(1), "start")
    # And no node of it carries the layer.
    assert all("LD_PRELOAD" not in box.env for box in plain.processes.values())


def test_a_generated_schedule_plays_clock_faults(cluster: Cluster, nemesis: Nemesis) -> None:
    """The schedule producers draw clock faults like any other (the `clock` package), a
    saved schedule keeps them, and playing it leaves every clock true at its final heal."""
    schedule = generate_schedule(7, [1, 2], "clock", duration_s=4.0, fault_s=(0.5, 1.0),
                                 heal_s=(0.2, 0.4))
    assert Schedule.from_json(schedule.to_json()) == schedule
    started = [s.fault for s in schedule if s.action == "start" and s.fault is not None]
    assert started and all(f.fault.kind == "clock" for f in started)
    nemesis.run(schedule)
    assert nemesis.history is not None
    ops = [op for op in nemesis.history.snapshot() if op.process == "nemesis"
           and op.type == "ok"]
    starts = [op for op in ops if op.value.get("action") == "start"]
    assert len(starts) == len(started)
    for op in starts:
        for reading in op.value["clock"].values():
            assert "offset" in reading["after"], op.value
    final = ops[-1]
    assert final.f == "heal"
    assert final.value["clock"], final.value
    for reading in final.value["clock"].values():
        assert abs(reading["after"]["offset"]) < MEASURE_TOLERANCE_S


def test_strobe_and_rate_plans() -> None:
    strobe = strobe_plan(base=1.0, delta=20.0, period=0.5, duration=2.0)
    assert strobe(0.0) == (21.0, 0.5)
    assert strobe(0.6) == pytest.approx((1.0, 0.4))
    assert strobe(1.1) == pytest.approx((21.0, 0.4))
    assert strobe(2.0) is None  # over: the fault settles back on its base
    rate = rate_plan(base=-2.0, rate=1.5)
    assert rate(4.0) == (0.0, RATE_TICK_S)  # -2 + 4 * 0.5


def test_bad_clock_attributes_are_refused_before_any_change(cluster: Cluster,
                                                            nemesis: Nemesis) -> None:
    bad = Fault("clock", clock="strobe", attributes={"period_ms": 0}).on(1)
    with pytest.raises(NemesisError, match="a strobe needs period_ms > 0"):
        nemesis.invoke(bad, "start")
    with pytest.raises(NemesisError, match="rate_permille >= 0"):
        nemesis.invoke(Fault("clock", clock="rate", attributes={"rate_permille": -1}).on(1))
    assert abs(Clock().measure(nemesis.ctx, 1)["offset"]) < MEASURE_TOLERANCE_S
