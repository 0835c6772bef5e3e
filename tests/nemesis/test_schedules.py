"""Nemesis data: the fault catalogue, resolution against nodes, schedules (seeded, drawn by
Hypothesis, the search's programs, and the shapes saved before they were one type), JSON."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings

from harness.nemesis import (
    FAULTS,
    PACKAGES,
    Fault,
    FaultInstance,
    NemesisError,
    Schedule,
    Step,
    always_heal_last,
    generate_schedule,
    parse_faults,
    play,
    program_strategy,
    schedule_strategy,
)

NODES = [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "name,count,down",
    [
        ("kill-one", 1, 1),
        ("kill-minority", 2, 2),
        ("kill-majority", 3, 3),
        ("pause-minority", 2, 2),
        ("restart-one", 1, 0),
        ("client-latency", 1, 0),
        ("gossip-down", 1, 0),  # inbound only: the node still talks, so it is not down
        ("gossip-timeout", 1, 0),
        ("gossip-latency", 1, 0),
        ("store-reset-peer", 0, 0),
        ("kill-store", 0, 0),
    ],
)
def test_resolution_picks_the_right_number_of_nodes(name, count, down):
    inst = FAULTS[name].resolve(NODES, random.Random(1))
    assert len(inst.nodes) == count
    assert len(inst.down) == down
    assert set(inst.down) <= set(inst.nodes) | set(NODES)


def test_partitions_make_the_minority_down_and_keep_rings_and_bridges_connected():
    rng = random.Random(7)
    halves = FAULTS["partition-halves"].resolve(NODES, rng)
    assert len(halves.down) == 2
    for node in halves.down:  # the minority side drops everyone on the majority side
        assert len(halves.grudge[node]) == 3
    isolated = FAULTS["partition-isolate-one"].resolve(NODES, rng)
    assert len(isolated.down) == 1 and isolated.grudge[isolated.down[0]] == frozenset(
        set(NODES) - set(isolated.down)
    )
    assert FAULTS["partition-majorities-ring"].resolve(NODES, rng).down == ()
    assert FAULTS["partition-bridge"].resolve(NODES, rng).down == ()


def test_even_split_takes_the_half_with_the_lowest_id_as_main():
    inst = FAULTS["partition-halves"].resolve([1, 2, 3, 4], random.Random(3))
    assert 1 not in inst.down and len(inst.down) == 2


def test_same_seed_same_schedule_different_seed_different_schedule():
    a = generate_schedule(42, NODES, "process,partition", duration_s=120)
    b = generate_schedule(42, NODES, "process,partition", duration_s=120)
    c = generate_schedule(43, NODES, "process,partition", duration_s=120)
    assert a == b
    assert a != c


def test_schedule_alternates_heal_and_fault_periods_and_ends_healed():
    s = generate_schedule(5, NODES, "kill", duration_s=60, fault_s=(2, 4), heal_s=(3, 5))
    s.validate()
    actions = [step.action for step in s.steps]
    assert actions[-1] == "heal" and s.duration_s >= 60
    assert actions[:-1] == ["start", "stop"] * ((len(actions) - 1) // 2)
    previous_stop = 0.0
    for start, stop in zip(s.steps[:-1:2], s.steps[1:-1:2], strict=True):
        assert start.fault == stop.fault
        assert 3 <= start.at_s - previous_stop <= 5 + 1e-3
        assert 2 <= stop.at_s - start.at_s <= 4 + 1e-3
        previous_stop = stop.at_s


def test_json_round_trip(tmp_path):
    s = generate_schedule(9, NODES, list(FAULTS.values()), duration_s=300)
    assert Schedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert Schedule.load(s.save(tmp_path / "schedule.json")) == s
    assert "seed=9" in s.describe()


def test_broken_schedules_are_refused_with_a_reason(tmp_path):
    inst = FAULTS["kill-one"].resolve(NODES, random.Random(0))
    no_heal = Schedule(1, tuple(NODES), (Step(1, "start", inst), Step(2, "stop", inst)))
    with pytest.raises(NemesisError, match="must end with a heal"):
        no_heal.validate()
    assert always_heal_last(no_heal).steps[-1] == Step(2, "heal")
    backwards = Schedule(1, tuple(NODES), (Step(5, "start", inst), Step(2, "heal")))
    with pytest.raises(NemesisError, match="back in time"):
        backwards.validate()
    bad = tmp_path / "bad.json"
    bad.write_text('{"seed": 1}')
    with pytest.raises(NemesisError, match="not a fault schedule"):
        Schedule.load(bad)


def test_fault_names_and_packages():
    assert [f.name for f in parse_faults("kill")] == ["kill-one", "kill-minority"]
    assert len(parse_faults("partition,kill-one")) == 5
    for package in PACKAGES.values():
        assert all(name in FAULTS for name in package)
    with pytest.raises(NemesisError, match="unknown fault 'kil-one'"):
        parse_faults("kil-one")
    with pytest.raises(NemesisError, match="no faults named"):
        parse_faults(" , ")


def test_fault_validation():
    with pytest.raises(NemesisError, match="unknown fault kind"):
        Fault("explode")
    with pytest.raises(NemesisError, match="partition needs grudge"):
        Fault("partition", grudge="thirds")
    with pytest.raises(NemesisError, match="unknown toxic"):
        Fault("toxic", link="client", toxic="loss")
    with pytest.raises(NemesisError, match="bridge needs at least 3 nodes"):
        FAULTS["partition-bridge"].resolve([1, 2], random.Random(0))


def test_instances_carry_toxic_attributes():
    inst = FAULTS["gossip-latency"].resolve(NODES, random.Random(0))
    d = inst.to_json()
    assert d["fault"]["attributes"] == {"latency": 200, "jitter": 50}
    assert FaultInstance.from_json(d) == inst


@settings(max_examples=50, deadline=None)
@given(schedule_strategy(NODES, "process,partition,gossip-toxics,store"))
def test_hypothesis_schedules_are_well_formed(schedule):
    schedule.validate()
    assert schedule.steps[-1].action == "heal"
    assert Schedule.from_json(json.loads(schedule.dumps())) == schedule
    for step in schedule.steps[:-1]:
        assert set(step.fault.nodes) <= set(NODES)
        assert set(step.fault.down) <= set(NODES)


# -- one type for schedules and the search's programs ------------------------------------------

# Saved by the search before schedules and step programs were one type.
OLD_STEP_PROGRAM = {
    "cluster": {"nodes": 3, "backend": "local", "defects": ["lose-acked"], "seed": 7,
                "gossip": {"probe_interval_ms": 300}},
    "steps": [
        {"op": "append", "key": "a", "records": 3},
        {"op": "fault", "fault": "kill-one", "action": "start"},
        {"op": "read"},
        {"op": "heal"},
        {"op": "fault", "fault": "kill-one", "action": "start"},
        {"op": "wait", "seconds": 0.5},
    ],
}


def test_an_old_step_program_loads_with_the_victims_its_runner_chose(tmp_path):
    saved = tmp_path / "program.json"
    saved.write_text(json.dumps(OLD_STEP_PROGRAM))
    schedule = Schedule.load(saved)
    rng = random.Random(7)  # the runner drew victims from the cluster seed, once per heal
    first = FAULTS["kill-one"].resolve([1, 2, 3], rng)
    second = FAULTS["kill-one"].resolve([1, 2, 3], rng)
    assert schedule.steps == (
        Step(None, "append", args={"key": "a", "records": 3}),
        Step(None, "start", first),
        Step(None, "read"),
        Step(None, "heal"),
        Step(None, "start", second),
        Step(None, "wait", args={"seconds": 0.5}),
        Step(None, "heal"),  # its runner healed before the final read
    )
    assert (schedule.seed, schedule.nodes) == (7, (1, 2, 3))
    assert schedule.cluster["defects"] == ["lose-acked"]
    assert Schedule.from_json(json.loads(schedule.dumps())) == schedule


def test_an_old_timed_schedule_still_loads():
    old = {"seed": 3, "nodes": [1, 2, 3], "steps": [
        {"at_s": 1.5, "action": "start", "fault": {
            "fault": {"kind": "partition", "target": "one", "grudge": "halves"},
            "nodes": [1, 2, 3], "grudge": {"1": [2, 3], "2": [1], "3": [1]}, "down": [1]}},
        {"at_s": 4.0, "action": "stop", "fault": {
            "fault": {"kind": "partition", "target": "one", "grudge": "halves"},
            "nodes": [1, 2, 3], "grudge": {"1": [2, 3], "2": [1], "3": [1]}, "down": [1]}},
        {"at_s": 6.0, "action": "heal"},
    ]}
    schedule = Schedule.from_json(old)
    assert schedule.steps[0].fault.grudge[1] == frozenset({2, 3})
    assert schedule.duration_s == 6.0 and schedule.to_json() == old


def test_a_broken_step_program_is_refused_naming_the_step():
    bad = {"cluster": {"nodes": 3}, "steps": [{"op": "append", "records": 1}, {"op": "explode"}]}
    with pytest.raises(NemesisError, match="step 1 .* is not one of append, read"):
        Schedule.from_json(bad)
    unknown = {"cluster": {}, "steps": [{"op": "fault", "fault": "kil-one"}]}
    with pytest.raises(NemesisError, match="unknown fault 'kil-one'"):
        Schedule.from_json(unknown)


@settings(max_examples=50, deadline=None)
@given(program_strategy([1, 2, 3], "kill-one,pause-one,kill-store,client-reset-peer",
                        cluster={"nodes": 3}))
def test_search_programs_keep_one_fault_at_a_time_and_end_healed(schedule):
    schedule.validate()
    assert schedule.steps[-1].action == "heal" and schedule.cluster == {"nodes": 3}
    active = 0
    for step in schedule.steps:
        assert step.at_s is None
        active += {"start": 1, "heal": -active}.get(step.action, 0)
        assert active <= 1
        if step.action == "append":
            assert 1 <= step.args["records"] <= 5
    assert Schedule.from_json(json.loads(schedule.dumps())) == schedule


class Played:
    """What `play` asked of the nemesis and of the client, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def invoke(self, instance, action):
        self.log.append(f"{action} {instance.name}")

    def heal(self):
        self.log.append("heal")

    def client(self, step):
        self.log.append(f"client {step.action}")


def test_play_hands_client_steps_to_the_client_and_faults_to_the_nemesis():
    kill = FAULTS["kill-one"].on(1)
    schedule = Schedule(0, (1, 2, 3), (
        Step(None, "append", args={"key": "a", "records": 1}),
        Step(None, "start", kill),
        Step(None, "read"),
        Step(None, "heal"),
    ))
    played = Played()
    assert play(schedule, played, client=played.client) is True
    assert played.log == ["client append", "start kill-one", "client read", "heal"]
    with pytest.raises(NemesisError, match="has a client step"):
        play(schedule, Played())


def test_faults_may_be_given_as_names_packages_or_faults():
    from harness.nemesis.generator import fault_pool

    assert fault_pool(["kill-one", "store", FAULTS["kill-one"]]) == [
        FAULTS["kill-one"], FAULTS["kill-store"], FAULTS["restart-store"]
    ]
    assert fault_pool("pause") == fault_pool(["pause-one", "pause-minority"])


def test_replay_refuses_a_file_that_is_no_schedule_naming_the_step(tmp_path, capsys):
    from harness.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"cluster": {}, "steps": [{"op": "explode"}]}')
    assert main(["replay", str(bad)]) == 2
    assert "step 0 {'op': 'explode'} is not one of append, read" in capsys.readouterr().err


def test_each_fault_once_plays_every_fault_in_a_seeded_order() -> None:
    from harness.nemesis import each_fault_once

    faults = ["kill-one", "pause-one", "clock-strobe", "stress-cpu-one", "leave-one"]
    one = each_fault_once(7, [1, 2, 3], faults, fault_s=(1.0, 2.0), heal_s=(1.0, 2.0))
    one.validate()
    starts = [s.fault.name for s in one if s.action == "start"]
    assert sorted(starts) == sorted(faults), one.describe()
    assert one.steps[-1].action == "heal"
    assert one.to_json() == each_fault_once(7, [1, 2, 3], faults, fault_s=(1.0, 2.0),
                                            heal_s=(1.0, 2.0)).to_json()
    other = each_fault_once(8, [1, 2, 3], faults, fault_s=(1.0, 2.0), heal_s=(1.0, 2.0))
    assert other.to_json() != one.to_json()
