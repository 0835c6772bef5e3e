"""The nemesis on a real 3-node reference cluster (local backend, Toxiproxy in front).

A fault schedule is played against real processes while a probe samples every node's
DescribeCluster into the same history; the membership checker then judges the views
against the truth the nemesis recorded. The reference server implements SWIM correctly,
so its views must converge within the bound derived from its gossip timing.
"""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
import requests
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness.checkers import membership
from harness.cluster import Cluster, UnsupportedFault
from harness.history import History, history_path
from harness.nemesis import FAULTS, Nemesis, Schedule, Step

PROBE_INTERVAL_MS = 500
GOSSIP_INTERVAL_MS = 250
pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster(
        nodes=3,
        toxiproxy=True,
        toxiproxy_url=None,
        backend="local",
        target="reference",
        defects=(),
        gossip={
            "probe_interval_ms": PROBE_INTERVAL_MS,
            "roundtrip_timeout_ms": 200,
            "gossip_interval_ms": GOSSIP_INTERVAL_MS,
            "suspicion_mult": 2,
        },
    ),
]
STATE = {
    HStreamApi_pb2.NodeState.Running: "alive",
    HStreamApi_pb2.NodeState.Dead: "dead",
    HStreamApi_pb2.NodeState.Unavailable: "suspect",
    HStreamApi_pb2.NodeState.Starting: "suspect",
}


class ViewProbe:
    """Samples DescribeCluster of every node (directly, past any proxy) into a history."""

    def __init__(self, cluster: Cluster, history: History, interval_s: float = 0.25) -> None:
        self.cluster = cluster
        self.history = history
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="view-probe", daemon=True)
        self.members = [str(n.id) for n in cluster.nodes]

    def _sample(self, node_id: int, target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
            op = self.history.invoke(f"probe-{node_id}", "view", {"observer": str(node_id)})
            try:
                reply = stub.DescribeCluster(empty_pb2.Empty(), timeout=0.5)
            except grpc.RpcError as exc:
                self.history.error(op, exc)
                return
        # Suspected peers are in neither list of DescribeCluster: say so explicitly.
        view = dict.fromkeys(self.members, "suspect")
        for status in reply.serverNodesStatus:
            view[str(status.node.id)] = STATE.get(status.state, "suspect")
        self.history.ok(op, {"observer": str(node_id), "view": view})

    def _run(self) -> None:
        while not self.stop.is_set():
            for node in self.cluster.nodes:
                if node.state == "running":
                    self._sample(node.id, str(node.direct_client))
            self.stop.wait(self.interval_s)

    def __enter__(self) -> ViewProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_schedule_on_a_real_cluster_converges_within_the_swim_bound(cluster: Cluster, request):
    path = history_path(f"checkers-{request.node.name}")
    history = History(path)
    schedule = Schedule(
        seed=0,
        nodes=(1, 2, 3),
        steps=(
            Step(3.0, "start", FAULTS["kill-one"].on(3)),
            Step(9.0, "stop", FAULTS["kill-one"].on(3)),
            Step(15.0, "start", FAULTS["pause-one"].on(2)),
            Step(21.0, "stop", FAULTS["pause-one"].on(2)),
            Step(27.0, "start", FAULTS["gossip-down"].on(1)),
            Step(33.0, "stop", FAULTS["gossip-down"].on(1)),
            Step(36.0, "start", FAULTS["client-latency"].on(1)),
            Step(38.0, "stop", FAULTS["client-latency"].on(1)),
            Step(44.0, "heal"),
        ),
    )
    schedule.validate()
    nemesis = Nemesis(cluster, history)
    with ViewProbe(cluster, history):
        nemesis.run(schedule)
        time.sleep(4)  # let the last epoch show its agreement
    history.close()

    nemesis_ops = [op for op in history.ops if op.process == "nemesis" and op.type != "invoke"]
    assert [op.type for op in nemesis_ops] == ["ok"] * 9, [op.to_dict() for op in nemesis_ops]
    assert nemesis_ops[0].value["down"] == [3] and nemesis_ops[1].value["up"] == [3]
    assert all(node.state == "running" for node in cluster.nodes)

    # Reference timing: suspicion lasts suspicion_mult * max(1, log10 3) = 2 periods.
    bounds = membership.swim_bounds(
        PROBE_INTERVAL_MS / 1000, 3, gossip_interval_s=GOSSIP_INTERVAL_MS / 1000,
        suspicion_periods=2, sample_interval_s=0.25,
    )
    # Two cores shared by every process of the run: allow scheduling delay on top.
    bound = bounds["agreement_bound_s"] * 2
    result = membership.check(history.ops, bound_s=bound)
    evidence = f"history {path}; result {result.to_json()}; logs {dict(cluster.logs())}"
    assert result.valid is True, evidence
    downs = [ep for ep in result.figures["episodes"] if ep["event"] == "down"]
    assert [ep["node"] for ep in downs] == ["3", "2"], evidence
    for ep in downs:
        assert ep["confirmed_dead_s"] is not None and ep["confirmed_dead_s"] <= bound, evidence
    # The gossip proxy of node 1 went down for real: the others suspected it meanwhile
    # (and it refuted, staying a member, as SWIM should).
    cut_at = nemesis_ops[4].time - history.ops[0].time
    healed_at = nemesis_ops[5].time - history.ops[0].time
    suspicions = [
        a for a in result.anomalies["false_suspicion"]
        if a["member"] == "1" and cut_at / 1e9 <= a["at_s"] <= healed_at / 1e9 + bound
    ]
    assert suspicions, evidence


def test_unsupported_fault_is_recorded_as_fail_and_teardown_heals(cluster: Cluster):
    history = History()
    nemesis = Nemesis(cluster, history)
    with pytest.raises(UnsupportedFault):
        nemesis.invoke(FAULTS["partition-halves"].resolve([1, 2, 3], random.Random(1)))
    assert history.ops[-1].type == "fail" and "partition" in str(history.ops[-1].error)
    nemesis.invoke(FAULTS["kill-one"].on(2))
    assert cluster.node(2).state == "killed"
    nemesis.teardown()  # never stopped explicitly: teardown restarts it
    assert cluster.node(2).state == "running"
    heal = history.ops[-1]
    assert heal.f == "heal" and heal.type == "ok" and heal.value["up"] == [2]


def test_store_faults_and_store_link_toxics_are_applied_and_undone(cluster: Cluster):
    history = History()
    nemesis = Nemesis(cluster, history)
    api = cluster.toxiproxy_url
    store_proxy = next(p.name for (proc, port), p in cluster.proxies.items() if port == "store")

    latency = FAULTS["store-latency"].on()
    nemesis.invoke(latency, "start")
    toxics = requests.get(f"{api}/proxies/{store_proxy}/toxics", timeout=5).json()
    assert [(t["type"], t["attributes"]["latency"]) for t in toxics] == [("latency", 200)]
    nemesis.invoke(latency, "stop")
    assert requests.get(f"{api}/proxies/{store_proxy}/toxics", timeout=5).json() == []

    down = FAULTS["store-down"].on()
    nemesis.invoke(down, "start")
    assert requests.get(f"{api}/proxies/{store_proxy}", timeout=5).json()["enabled"] is False
    nemesis.teardown()  # heals the proxy it disabled
    assert requests.get(f"{api}/proxies/{store_proxy}", timeout=5).json()["enabled"] is True

    kill = FAULTS["kill-store"].on()
    nemesis.invoke(kill, "start")
    nemesis.invoke(kill, "stop")  # restarts the store with its data
    completions = [op for op in history.ops if op.type != "invoke"]
    assert [(op.f, op.type) for op in completions] == [
        ("store-latency", "ok"), ("store-latency", "ok"),
        ("store-down", "ok"), ("heal", "ok"),
        ("kill-store", "ok"), ("kill-store", "ok"),
    ]
    assert all(op.value["down"] == [] for op in completions)  # servers stay members


def test_never_confirm_defect_fails_the_membership_check(cluster_factory, request):
    gossip = {"probe_interval_ms": PROBE_INTERVAL_MS, "roundtrip_timeout_ms": 200,
              "gossip_interval_ms": GOSSIP_INTERVAL_MS, "suspicion_mult": 2}
    broken = cluster_factory(nodes=3, toxiproxy=False, backend="local",
                             target="reference", defects=("never-confirm",), gossip=gossip)
    path = history_path(f"checkers-{request.node.name}")
    bound = 2 * membership.swim_bounds(
        PROBE_INTERVAL_MS / 1000, 3, gossip_interval_s=GOSSIP_INTERVAL_MS / 1000,
        suspicion_periods=2, sample_interval_s=0.25,
    )["agreement_bound_s"]
    with History(path) as history:
        nemesis = Nemesis(broken, history)
        with ViewProbe(broken, history):
            time.sleep(2)
            nemesis.invoke(FAULTS["kill-one"].on(3))
            time.sleep(bound + 2)
            nemesis.teardown()
    result = membership.check(history.ops, bound_s=bound)
    evidence = f"history {path}; {result.summary()}; epochs {result.figures['epochs']}"
    assert result.valid is False, evidence
    (stuck,) = result.anomalies["not_converged"]
    assert stuck["down"] == ["3"] and stuck["agreement_s"] is None, evidence
    (episode,) = [ep for ep in result.figures["episodes"] if ep["event"] == "down"]
    assert episode["first_suspicion_s"] is not None, evidence  # suspected ...
    assert episode["confirmed_dead_s"] is None, evidence  # ... but never confirmed
