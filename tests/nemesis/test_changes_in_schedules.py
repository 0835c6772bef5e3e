"""Stress and membership changes as schedule material: drawn by the producers, saved and
replayed as JSON, and played on a real local cluster with their truth in the history."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings

from harness.history import History
from harness.nemesis import FAULTS, PACKAGES, Nemesis, Schedule, Step
from harness.nemesis.generator import generate_schedule, program_strategy

NODES = [1, 2, 3]
NEW_FAULTS = [*PACKAGES["stress"], *PACKAGES["membership-changes"]]


def test_new_faults_resolve_with_their_truth():
    rng = random.Random(5)
    for name in PACKAGES["stress"]:
        instance = FAULTS[name].resolve(NODES, rng)
        assert len(instance.nodes) == 1 and instance.down == (), name  # starved, not down
    leave = FAULTS["leave-one"].resolve(NODES, rng)
    assert leave.down == leave.nodes and len(leave.nodes) == 1
    rolling = FAULTS["rolling-restart"].resolve(NODES, rng)
    assert rolling.nodes == tuple(NODES) and rolling.down == ()
    join = FAULTS["join"].resolve(NODES, rng)
    assert join.nodes == () and join.down == ()  # the family starts the next late node


def test_generated_schedules_of_new_faults_round_trip(tmp_path: Path):
    schedule = generate_schedule(11, NODES, "stress,membership-changes", duration_s=400)
    names = {step.fault.name for step in schedule if step.fault is not None}
    assert names <= set(NEW_FAULTS) and len(names) >= 3, names
    assert Schedule.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule
    assert Schedule.load(schedule.save(tmp_path / "s.json")) == schedule


@settings(max_examples=30, deadline=None)
@given(program_strategy(NODES, NEW_FAULTS))
def test_programs_of_new_faults_are_valid(schedule: Schedule):
    schedule.validate()


@pytest.mark.slow
def test_schedule_plays_stress_leave_and_join_on_a_real_cluster(cluster_factory, tmp_path):
    """stress-cpu, a graceful leave (and its return) and a join, played in time: each
    recorded with who is a member when, and healed at the end."""
    cluster = cluster_factory(nodes=3, late_nodes=1, backend="local", target="reference",
                              defects=(), toxiproxy=False,
                              gossip={"probe_interval_ms": 300, "roundtrip_timeout_ms": 120,
                                      "gossip_interval_ms": 150, "suspicion_mult": 3})
    stress = FAULTS["stress-cpu-one"].on(1)
    leave = FAULTS["leave-one"].on(2)
    join = FAULTS["join"].resolve(NODES, random.Random(0))
    schedule = Schedule(seed=0, nodes=tuple(NODES), steps=(
        Step(0.5, "start", stress), Step(2.0, "stop", stress),
        Step(2.5, "start", leave), Step(4.0, "stop", leave),
        Step(4.5, "start", join), Step(5.0, "heal"),
    ))
    schedule.validate()
    with History(tmp_path / "history.jsonl") as history:
        nemesis = Nemesis(cluster, history)
        nemesis.run(schedule)
        done = [op for op in history.snapshot() if op.process == "nemesis" and op.type == "ok"]
    truth = [(op.f, op.value.get("phase", op.value["action"]), op.value["down"], op.value["up"])
             for op in done]
    assert truth == [
        ("stress-cpu-one", "start", [], []),
        ("stress-cpu-one", "stop", [], []),
        ("leave-one", "stop:2", [2], []),
        ("leave-one", "exited:2", [], []),
        ("leave-one", "start:2", [], [2]),
        ("leave-one", "rejoined:2", [], []),
        ("join", "start", [], [4]),
        ("heal", "heal", [], []),
    ], truth
    assert [n.state for n in cluster.nodes] == ["running"] * 4
