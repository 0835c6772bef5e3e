"""Model-based check: random API programs against the live cluster and an in-memory model.

The model holds what §1-§5 promise — streams with their shards, every acknowledged batch
in per-shard order, subscriptions that deliver each record once to a live consumer that
acks — and every response is compared with it. Hypothesis shrinks a failing program to its
shortest form and prints it with the seed (`@reproduce_failure`), so it replays.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from HStream.Server import HStreamApi_pb2 as api
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from harness import wire

from .conftest import read_all, shards_of

# Returns as soon as the records arrived; the deadline only bounds a broken server.
DELIVERY_DEADLINE_S = 30.0


class StreamModel:
    def __init__(self, shards: list[api.Shard]) -> None:
        self.shards = shards
        self.batches: dict[int, list[tuple[int, list[bytes]]]] = {s.shardId: [] for s in shards}
        self.subscriptions: list[str] = []


def make_machine(endpoints: list[str]) -> type[RuleBasedStateMachine]:
    nodes = [wire.stub(endpoint) for endpoint in endpoints]
    run_id = uuid.uuid4().hex[:8]

    class ApiMachine(RuleBasedStateMachine):
        streams = Bundle("streams")

        def __init__(self) -> None:
            super().__init__()
            self.model: dict[str, StreamModel] = {}
            self.sessions: dict[str, wire.FetchSession] = {}
            self.delivered: dict[str, list[bytes]] = {}
            self.counter = 0

        def node(self, index: int):
            return nodes[index % len(nodes)]

        @rule(target=streams, shard_count=st.integers(1, 3), via=st.integers(0, 4))
        def create_stream(self, shard_count, via):
            self.counter += 1
            name = f"model_{run_id}_{id(self) % 10**6}_{self.counter}"
            self.node(via).CreateStream(
                api.Stream(streamName=name, replicationFactor=1, shardCount=shard_count)
            )
            shards = shards_of(self.node(via + 1), name)
            assert len(shards) == shard_count, f"{name}: {len(shards)} shards"
            self.model[name] = StreamModel(shards)
            return name

        @rule(name=streams, via=st.integers(0, 4))
        def create_existing_fails(self, name, via):
            if name not in self.model:
                return
            try:
                self.node(via).CreateStream(
                    api.Stream(streamName=name, replicationFactor=1, shardCount=1)
                )
            except grpc.RpcError as raw:
                error = wire.WireError.of(raw)
                assert (error.status, error.code) == (grpc.StatusCode.ALREADY_EXISTS, 201), error
            else:
                raise AssertionError(f"re-creating {name} succeeded")

        @rule(name=consumes(streams), via=st.integers(0, 4))
        def delete_stream(self, name, via):
            stream = self.model.pop(name, None)
            if stream is None:
                return
            for sub_id in stream.subscriptions:
                session = self.sessions.pop(sub_id, None)
                if session:
                    session.close()
            self.node(via).DeleteStream(api.DeleteStreamRequest(streamName=name, force=True))
            try:
                self.node(via + 1).GetStream(api.GetStreamRequest(name=name))
            except grpc.RpcError as raw:
                assert wire.WireError.of(raw).code == 200, wire.WireError.of(raw)
            else:
                raise AssertionError(f"{name} still there after delete")

        @rule(
            name=streams,
            keys=st.lists(st.sampled_from(["a", "b", "c", "d", "é", ""]), min_size=1, max_size=5),
            compression=st.sampled_from(["none", "gzip", "zstd"]),
            via=st.integers(0, 4),
        )
        def append(self, name, keys, compression, via):
            stream = self.model.get(name)
            if stream is None:
                return
            shard = wire.shard_for_key(stream.shards, keys[0])
            self.counter += 1
            payloads = [f"{name}/{self.counter}/{i}".encode() for i in range(len(keys))]
            records = [wire.raw_record(p, key=keys[0]) for p in payloads]
            answer = self.node(via).Append(
                api.AppendRequest(
                    streamName=name,
                    shardId=shard.shardId,
                    records=wire.batch(records, compression),
                )
            )
            ids = list(answer.recordIds)
            assert [i.batchIndex for i in ids] == list(range(len(keys))), ids
            history = stream.batches[shard.shardId]
            if history:
                assert ids[0].batchId > history[-1][0], (
                    f"batch id {ids[0].batchId} not above the previous {history[-1][0]}"
                )
            history.append((ids[0].batchId, payloads))

        @rule(name=streams, via=st.integers(0, 4))
        def read_every_shard(self, name, via):
            stream = self.model.get(name)
            if stream is None:
                return
            for shard in stream.shards:
                want = stream.batches[shard.shardId]
                got = read_all(self.node(via), name, shard.shardId, want_batches=len(want))
                seen = [
                    (b.recordIds[0].batchId, [r.payload for r in wire.unbatch(b.record)])
                    for b in got
                ]
                assert seen == want, f"{name} shard {shard.shardId}: read {seen}, model {want}"

        @rule(name=streams, via=st.integers(0, 4))
        def subscribe(self, name, via):
            stream = self.model.get(name)
            if stream is None or len(stream.subscriptions) >= 2:
                return
            self.counter += 1
            sub_id = f"msub_{run_id}_{id(self) % 10**6}_{self.counter}"
            self.node(via).CreateSubscription(
                api.Subscription(
                    subscriptionId=sub_id,
                    streamName=name,
                    ackTimeoutSeconds=30,
                    maxUnackedRecords=10_000,
                )
            )
            stream.subscriptions.append(sub_id)
            owner = (
                self.node(via)
                .LookupSubscription(api.LookupSubscriptionRequest(subscriptionId=sub_id))
                .serverNode
            )
            self.sessions[sub_id] = wire.FetchSession(
                wire.stub(wire.endpoint_of(owner)), sub_id, "model-consumer"
            )
            self.delivered[sub_id] = []

        @rule(name=streams)
        def fetch_and_ack(self, name):
            stream = self.model.get(name)
            if stream is None:
                return
            written = sorted(
                p for batches in stream.batches.values() for _, ps in batches for p in ps
            )
            for sub_id in stream.subscriptions:
                session = self.sessions[sub_id]
                expected_new = len(written) - len(self.delivered[sub_id])
                got = (
                    session.take(expected_new, timeout=DELIVERY_DEADLINE_S) if expected_new else []
                )
                session.ack([record_id for record_id, _ in got])
                self.delivered[sub_id].extend(record.payload for _, record in got)
                assert sorted(self.delivered[sub_id]) == written, (
                    f"{sub_id}: delivered {len(self.delivered[sub_id])} "
                    f"(distinct {len(set(self.delivered[sub_id]))}) of {len(written)} written"
                )

        @invariant()
        def streams_listed(self):
            listed = {s.streamName for s in nodes[0].ListStreams(api.ListStreamsRequest()).streams}
            missing = set(self.model) - listed
            assert not missing, f"streams missing from ListStreams: {missing}"

        def teardown(self):
            for session in self.sessions.values():
                session.close()
            for name in self.model:
                try:
                    nodes[0].DeleteStream(api.DeleteStreamRequest(streamName=name, force=True))
                except grpc.RpcError:
                    pass

    return ApiMachine


@pytest.mark.conformance("api.model.state-machine")
def test_api_agrees_with_model(endpoints):
    machine = make_machine(endpoints)
    run_state_machine_as_test(
        machine,
        settings=settings(
            settings.default,
            stateful_step_count=20,
            max_examples=min(settings.default.max_examples, 8),
        ),
    )
