"""Faults aimed at roles as data: parsing, what may be aimed at what, JSON round trips in
histories and saved schedules, schedules drawing roles, and the nemesis refusing a role it
cannot resolve (the resolution against real clusters: test_roles_on_cluster.py)."""

from __future__ import annotations

import json
import random

import pytest
from fake_cluster import FakeCluster
from hypothesis import given, settings

from harness.history import History
from harness.nemesis import FAULTS, Fault, FaultInstance, Nemesis, NemesisError, Schedule, Step
from harness.nemesis.generator import generate_schedule, program_strategy, schedule_strategy
from harness.nemesis.roles import Answer, Resources, Role, roles_in, roles_of


def test_roles_parse_and_bad_ones_say_what_fits():
    assert Role.parse("shard-owner:s/12") == Role("shard-owner", "s/12")
    assert Role.parse("shard-owner:s/key=k1").resource == "s/key=k1"
    assert str(Role.parse("seed")) == "seed"
    for bad, says in [
        ("owner:s", "unknown role 'owner:s'; use one of shard-owner:<stream>/<shard-id>"),
        ("subscription-owner", "role subscription-owner names a resource"),
        ("seed:1", "role seed takes no resource"),
        ("shard-owner:s/x", "use shard-owner:<stream>/<shard-id>"),
    ]:
        with pytest.raises(NemesisError, match=says):
            Role.parse(bad)


def test_what_can_be_aimed_at_what():
    assert Fault("kill").aim("seed").fault.name == "kill-one@seed"
    assert Fault("toxic", link="store", toxic="latency").aim("store").nodes == ()
    assert Fault("kill-store").aim("store").fault.role == "store"
    assert Fault("partition", grudge="isolate-one").aim("seed").fault.grudge == "isolate-one"
    for fault, role, says in [
        (Fault("kill"), "store", "role store aims store faults"),
        (Fault("kill-store"), "seed", "a kill-store fault cannot be aimed at role seed"),
        (Fault("partition", grudge="halves"), "seed", "use grudge isolate-one"),
        (Fault("kill", target="minority"), "seed", "target one, not minority"),
    ]:
        with pytest.raises(NemesisError, match=says):
            fault.aim(role)


def test_an_aimed_fault_round_trips_through_json():
    instance = Fault("pause").aim("subscription-owner:sub-1")
    data = json.loads(json.dumps(instance.to_json()))
    assert data["fault"]["role"] == "subscription-owner:sub-1"
    assert FaultInstance.from_json(data) == instance
    resolved = instance.fault.on(2)
    assert FaultInstance.from_json(json.loads(json.dumps(resolved.to_json()))) == resolved
    answer = Answer("seed", (1,), "ClusterSpec.node_ids (the seeds), first running", {"x": 1})
    assert Answer.from_json(json.loads(json.dumps(answer.to_json()))) == answer
    # A fault saved before roles existed reads back unaimed.
    assert Fault.from_json({"kind": "kill", "target": "one"}).role is None


def test_a_saved_schedule_keeps_its_roles(tmp_path):
    aimed = Fault("kill").aim("shard-owner:{stream}/key=a")
    schedule = Schedule(0, (1, 2, 3), (Step(None, "start", aimed), Step(None, "stop", aimed),
                                       Step(None, "heal")))
    loaded = Schedule.load(schedule.save(tmp_path / "s.json"))
    assert loaded == schedule
    bound = loaded.bind(stream="st_1")
    assert [s.fault.fault.role for s in bound.steps if s.fault] == ["shard-owner:st_1/key=a"] * 2
    bound.validate()  # the stop still names the fault it started


def test_generated_schedules_draw_roles_and_stay_seeded():
    roles = ["subscription-owner:sub", "seed"]
    a = generate_schedule(7, [1, 2, 3], ["kill-one", "kill-store"], duration_s=120,
                          roles=roles)
    assert a == generate_schedule(7, [1, 2, 3], ["kill-one", "kill-store"], duration_s=120,
                                  roles=roles)
    starts = [s.fault for s in a.steps if s.action == "start" and s.fault]
    assert {f.fault.role for f in starts} & set(roles), "no fault drawn aimed at a role"
    # a store fault cannot take a server role: drawn by number as before
    assert all(f.fault.role is None for f in starts if f.fault.kind == "kill-store")
    # without roles the schedule is the one the seed always named
    plain = generate_schedule(7, [1, 2, 3], ["kill-one", "kill-store"], duration_s=120)
    assert all(s.fault is None or s.fault.fault.role is None for s in plain.steps)


@settings(max_examples=30, deadline=None)
@given(program_strategy([1, 2, 3], ["kill-one", "pause-one"], roles=["seed"]),
       schedule_strategy([1, 2, 3], ["kill-one"], roles=["seed"]))
def test_searched_schedules_may_be_aimed(program, timed):
    for schedule in (program, timed):
        schedule.validate()
        for step in schedule.steps:
            if step.fault is not None:
                assert step.fault.fault.role in (None, "seed")
                assert Schedule.from_json(schedule.to_json()) == schedule


def test_resources_and_roles_from_a_history():
    history = History()
    history.invoke("setup", "subscribe", {"subscription": "sub", "stream": "s"})
    history.invoke("p", "append", {"stream": "s", "key": "k1", "payload_id": "1"})
    history.invoke("nemesis", "kill-one", {"stream": "ignored"})
    assert roles_in(history) == ["shard-owner:s", "shard-owner:s/key=k1",
                                 "subscription-owner:sub", "seed"]
    found = Resources().scan(history.snapshot())
    assert found.seen == 3 and found.streams == ["s"]
    survey = {"owners": {"shard-owner:s/1": 2, "subscription-owner:sub": 1}, "seeds": [1, 2]}
    assert roles_of(2, survey) == ["shard-owner:s/1", "seed"]
    assert roles_of(3, survey) == []


def test_a_role_the_nemesis_cannot_resolve_is_refused_and_recorded():
    history = History()
    nemesis = Nemesis(FakeCluster(), history)
    with pytest.raises(NemesisError, match="role lookups need a cluster with client endpoints"):
        nemesis.invoke(Fault("kill").aim("subscription-owner:sub"), "start")
    with pytest.raises(NemesisError, match="has an unbound name"):
        nemesis.invoke(Fault("kill").aim("shard-owner:{stream}/key=a"), "start")
    done = [op for op in history if op.type != "invoke"]
    assert [op.type for op in done] == ["fail", "fail"]
    assert nemesis.cluster.calls == []  # nothing was killed


def test_every_fault_start_records_what_it_hit():
    history = History()
    nemesis = Nemesis(FakeCluster(), history)
    nemesis.invoke(FAULTS["kill-one"].on(2), "start")
    nemesis.invoke(FAULTS["kill-store"].on(), "start")
    nemesis.teardown()
    starts = [op.value["hit"] for op in history if op.type == "invoke" and "hit" in op.value]
    assert starts == [{"nodes": [2], "store": False}, {"nodes": [], "store": True}]


def test_seed_of_a_fake_cluster_without_endpoints_is_refused_not_guessed():
    # the resolver only answers from what the cluster tells; a fake has no client endpoints
    nemesis = Nemesis(FakeCluster(), None)
    with pytest.raises(NemesisError):
        nemesis.aimer.resolver.resolve("subscription-owner:sub")
    assert FAULTS["kill-one"].resolve([1, 2, 3], random.Random(1)).fault.role is None
