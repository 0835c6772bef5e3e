"""Faults aimed at roles, and what each fault hit: answers asked of the cluster itself.

A role names a node by what it does at the moment of the fault, not by its number:

* ``shard-owner:<stream>/<shard-id>`` (or ``<stream>/key=<key>``: the shard holding that
  key; or ``<stream>``: its first shard) -- the node LookupShard names;
* ``subscription-owner:<subscription>`` -- the node LookupSubscription names;
* ``connector-task:<name>`` -- the node GetConnector says runs the connector's task;
* ``seed`` -- a running seed node (the nodes started at bring-up, `ClusterSpec.node_ids`);
* ``store`` -- the store (aims store faults only; it is no server node).

`Resolver(cluster).resolve(role)` asks the cluster (any node that answers; the real
HStreamDB answers the same lookups, hstream-protocol §3) and returns an `Answer`: the nodes,
the call that gave them and the answer as data, which the nemesis records in the history.
`Resolver.survey(...)` is the same questions for every resource a workload used, so each
fault op records which roles the nodes it hit had (the reachability checker's input,
harness.checkers.reach).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from harness.nemesis.base import NemesisError

if TYPE_CHECKING:
    from harness.cluster import Cluster
    from harness.history import Op

ROLE_KINDS = ("shard-owner", "subscription-owner", "connector-task", "seed", "store")
# Roles that name a resource after the colon.
RESOURCE_ROLES = ("shard-owner", "subscription-owner", "connector-task")
# A lookup is a cheap read; a node that does not answer within this (paused, cut off) is
# skipped and the next one asked, so a survey never holds a fault back for long.
LOOKUP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Role:
    """A parsed role: its kind and the resource it names ("" for seed and store)."""

    kind: str
    resource: str = ""

    @classmethod
    def parse(cls, text: str) -> Role:
        kind, _, resource = str(text).partition(":")
        kind, resource = kind.strip(), resource.strip()
        if kind not in ROLE_KINDS:
            raise NemesisError(
                f"unknown role {text!r}; use one of shard-owner:<stream>/<shard-id>, "
                "subscription-owner:<subscription>, connector-task:<name>, seed, store"
            )
        if kind in RESOURCE_ROLES and not resource:
            raise NemesisError(f"role {kind} names a resource: {kind}:<name>, got {text!r}")
        if kind not in RESOURCE_ROLES and resource:
            raise NemesisError(f"role {kind} takes no resource, got {text!r}")
        if kind == "shard-owner":
            stream, _, shard = resource.partition("/")
            if not stream or (shard and not shard.startswith("key=") and not shard.isdigit()):
                raise NemesisError(
                    f"role {text!r}: use shard-owner:<stream>/<shard-id>, "
                    "shard-owner:<stream>/key=<key> or shard-owner:<stream>"
                )
        return cls(kind, resource)

    def __str__(self) -> str:
        return f"{self.kind}:{self.resource}" if self.resource else self.kind


def check_aim(
    kind: str, role: str, grudge: str | None, link: str | None, target: str = "one"
) -> None:
    """Refuse a role a fault kind cannot be aimed at, in one line saying what fits."""
    parsed = Role.parse(role)
    if target != "one":
        raise NemesisError(f"a fault aimed at role {role} hits that role's node: target one, "
                           f"not {target}")
    store_fault = kind in ("kill-store", "restart-store") or (kind == "toxic" and link == "store")
    if parsed.kind == "store":
        if not store_fault:
            raise NemesisError(
                f"role store aims store faults (kill-store, restart-store, store toxics), "
                f"not {kind}"
            )
        return
    if store_fault or kind in ("join", "crash", "freeze"):
        raise NemesisError(f"a {kind} fault cannot be aimed at role {role}: it hits no server")
    if kind == "partition" and grudge != "isolate-one":
        raise NemesisError(
            f"a partition aimed at role {role} cuts that node off: use grudge isolate-one"
        )


@dataclass(frozen=True)
class Answer:
    """What the cluster answered for a role: the nodes, the call, the answer as data."""

    role: str
    nodes: tuple[int, ...]
    call: str
    answer: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "nodes": list(self.nodes), "call": self.call,
                "answer": dict(self.answer)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Answer:
        return cls(
            role=str(d["role"]),
            nodes=tuple(int(n) for n in d.get("nodes") or ()),
            call=str(d.get("call", "")),
            answer=dict(d.get("answer") or {}),
        )


@dataclass
class Resources:
    """What a workload used: streams, subscriptions and connectors, in first-use order."""

    streams: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    connectors: list[str] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)  # stream -> keys appended to
    seen: int = 0  # ops scanned so far (scanning a growing history resumes here)

    def scan(self, ops: Sequence[Op]) -> Resources:
        """Add what the client ops from `seen` on name; nemesis ops are skipped."""
        for op in ops[self.seen:]:
            v = op.value
            if op.is_nemesis or not isinstance(v, dict):
                continue
            stream, sub, conn = v.get("stream"), v.get("subscription"), v.get("connector")
            if isinstance(stream, str) and stream and stream not in self.streams:
                self.streams.append(stream)
            if isinstance(sub, str) and sub and sub not in self.subscriptions:
                self.subscriptions.append(sub)
            if isinstance(conn, str) and conn and conn not in self.connectors:
                self.connectors.append(conn)
            if op.f == "append" and isinstance(stream, str) and isinstance(v.get("key"), str):
                keys = self.keys.setdefault(stream, [])
                if v["key"] not in keys:
                    keys.append(v["key"])
        self.seen = len(ops)
        return self

    def roles(self) -> list[str]:
        """Every role these resources give (what a schedule search may aim faults at)."""
        out = [f"shard-owner:{s}" for s in self.streams]
        out += [f"shard-owner:{s}/key={k}" for s in self.streams for k in self.keys.get(s, ())]
        out += [f"subscription-owner:{s}" for s in self.subscriptions]
        out += [f"connector-task:{c}" for c in self.connectors]
        return [*out, "seed"]


class Resolver:
    """Asks a running cluster who holds a role, over the harness's own gRPC stubs."""

    def __init__(self, cluster: Cluster, timeout_s: float = LOOKUP_TIMEOUT_S) -> None:
        self.cluster = cluster
        self.timeout_s = timeout_s
        self._shards: dict[str, list[Any]] = {}  # stream -> its shards (they never change)
        self._answered = ""

    # -- the cluster's nodes
    def _nodes(self) -> list[Any]:
        return [n for n in getattr(self.cluster, "nodes", ()) if hasattr(n, "client")]

    def node_of(self, host: str, port: int, server_id: int | None = None) -> int:
        """The cluster node an answer's ServerNode (or "host:port") names."""
        endpoint = f"{host}:{port}"
        for n in self._nodes():
            if endpoint in (str(n.client), str(n.direct_client)):
                return int(n.id)
        ids = {int(n.id) for n in self._nodes()}
        if server_id is not None and server_id in ids:
            return server_id
        raise NemesisError(
            f"the cluster answered server {server_id} at {endpoint}, which is no node of it "
            f"(nodes: {', '.join(str(n.client) for n in self._nodes())})"
        )

    def _ask(self, method: str, request: Any) -> tuple[Any, str]:
        """Ask running nodes in turn (directly, past any proxy's toxics) until one answers."""
        from HStream.Server import HStreamApi_pb2_grpc as api_grpc

        from harness import wire

        nodes = self._nodes()
        if not nodes:
            raise NemesisError("role lookups need a cluster with client endpoints")
        running = [n for n in nodes if getattr(n, "state", "running") == "running"]
        errors: list[str] = []
        # The node that answered last is asked first: a cut-off node costs a timeout once.
        order = sorted(running or nodes, key=lambda n: str(n.direct_client) != self._answered)
        for n in order:
            endpoint = str(n.direct_client)
            channel = wire.channel(endpoint)
            try:
                answer = getattr(api_grpc.HStreamApiStub(channel), method)(
                    request, timeout=self.timeout_s
                )
                self._answered = endpoint
                return answer, endpoint
            except grpc.RpcError as error:
                errors.append(f"node {n.id}: {error.code().name}")  # type: ignore[attr-defined]
            finally:
                channel.close()
        raise NemesisError(f"no node answered {method}: {'; '.join(errors)}")

    def shards(self, stream: str) -> list[Any]:
        from HStream.Server import HStreamApi_pb2 as api

        if stream not in self._shards:
            answer, _ = self._ask("ListShards", api.ListShardsRequest(streamName=stream))
            self._shards[stream] = sorted(answer.shards, key=lambda s: s.shardId)
        return self._shards[stream]

    def shard_id(self, resource: str) -> tuple[str, int]:
        """(stream, shard id) of a shard-owner resource: an id, a key's shard, or the first."""
        from harness import wire

        stream, _, which = resource.partition("/")
        if which.isdigit():
            return stream, int(which)
        shards = self.shards(stream)
        if not shards:
            raise NemesisError(f"stream {stream} has no shards")
        if which.startswith("key="):
            return stream, int(wire.shard_for_key(shards, which[len("key="):]).shardId)
        return stream, int(shards[0].shardId)

    # -- one role
    def resolve(self, role: str) -> Answer:
        """The nodes holding `role` now, with the call that said so and its answer."""
        from HStream.Server import HStreamApi_pb2 as api

        parsed = Role.parse(role)
        if parsed.kind == "store":
            return Answer(role, (), "the cluster's store process (no server node)", {})
        if parsed.kind == "seed":
            spec = getattr(self.cluster, "spec", None)
            seeds = list(getattr(spec, "node_ids", ())) or [int(n.id) for n in self._nodes()]
            states = {int(n.id): getattr(n, "state", "running") for n in self._nodes()}
            alive = [s for s in seeds if states.get(s, "running") == "running"]
            if not alive:
                raise NemesisError(f"no seed node is running (seeds {seeds})")
            return Answer(role, (alive[0],), "ClusterSpec.node_ids (the seeds), first running",
                          {"seeds": seeds, "running": alive})
        if parsed.kind == "shard-owner":
            stream, shard = self.shard_id(parsed.resource)
            answer, via = self._ask("LookupShard", api.LookupShardRequest(shardId=shard))
            node = answer.serverNode
            return Answer(
                role,
                (self.node_of(node.host, node.port, node.id),),
                f"LookupShard(shardId={shard}) of stream {stream} via {via}",
                {"shard": shard, "stream": stream, "id": node.id, "host": node.host,
                 "port": node.port},
            )
        if parsed.kind == "subscription-owner":
            answer, via = self._ask(
                "LookupSubscription",
                api.LookupSubscriptionRequest(subscriptionId=parsed.resource),
            )
            node = answer.serverNode
            return Answer(
                role,
                (self.node_of(node.host, node.port, node.id),),
                f"LookupSubscription(subscriptionId={parsed.resource}) via {via}",
                {"id": node.id, "host": node.host, "port": node.port},
            )
        answer, via = self._ask("GetConnector", api.GetConnectorRequest(name=parsed.resource))
        where = answer.node
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit():
            raise NemesisError(
                f"connector {parsed.resource} runs on no node yet (GetConnector node={where!r})"
            )
        return Answer(
            role,
            (self.node_of(host, int(port)),),
            f"GetConnector(name={parsed.resource}) via {via}",
            {"node": where, "task_id": answer.taskId},
        )

    # -- every role at once
    def survey(self, resources: Resources) -> dict[str, Any]:
        """Who holds every role the resources give, now: {"owners": role -> node, "shards":
        stream -> [[shard id, start, end]], "calls": [...], "errors": [...]}.

        A lookup that fails is listed under errors, never raised: a survey is evidence about a
        fault, and must not stop it.
        """
        owners: dict[str, int] = {}
        shard_ranges: dict[str, list[list[Any]]] = {}
        calls: list[str] = []
        errors: list[str] = []
        roles: list[str] = []
        for stream in resources.streams:
            try:
                shards = self.shards(stream)
            except NemesisError as error:
                errors.append(f"ListShards({stream}): {error}")
                continue
            shard_ranges[stream] = [
                [int(s.shardId), str(s.startHashRangeKey), str(s.endHashRangeKey)] for s in shards
            ]
            roles += [f"shard-owner:{stream}/{s.shardId}" for s in shards]
        roles += [f"subscription-owner:{s}" for s in resources.subscriptions]
        roles += [f"connector-task:{c}" for c in resources.connectors]
        for role in roles:
            try:
                answer = self.resolve(role)
            except NemesisError as error:
                errors.append(f"{role}: {error}")
                continue
            owners[role] = answer.nodes[0]
            calls.append(answer.call)
        spec = getattr(self.cluster, "spec", None)
        seeds = list(getattr(spec, "node_ids", ())) or [int(n.id) for n in self._nodes()]
        return {"owners": owners, "seeds": seeds, "shards": shard_ranges, "calls": calls,
                "errors": errors}


def roles_of(node: int, survey: Mapping[str, Any]) -> list[str]:
    """The roles `node` held according to a survey (as recorded in a fault op)."""
    held = sorted(role for role, owner in (survey.get("owners") or {}).items() if owner == node)
    if node in (survey.get("seeds") or ()):
        held.append("seed")
    return held


def roles_in(ops: Iterable[Op]) -> list[str]:
    """The roles the resources named in these client ops give (for a schedule search)."""
    return Resources().scan(list(ops)).roles()


STORE_KINDS = ("kill-store", "restart-store")


class Aimer:
    """The Nemesis's part in aiming: resolve role-aimed faults when they start, remember the
    resolution for their stop, and survey what every fault hits.

    Each start's recorded value gains ``"aim"`` (the `Answer`, for a role-aimed fault) and
    ``"hit"``: the server nodes it hit, whether it hit the store, and the survey (who owned
    every shard, subscription and connector task of the workload, the seeds) taken just
    before the fault, with the calls that gave it.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.resolver = Resolver(cluster)
        self.resources = Resources()
        self._aimed: dict[str, Any] = {}  # unresolved instance (JSON) -> resolved instance

    @staticmethod
    def _key(instance: Any) -> str:
        import json

        return json.dumps(instance.to_json(), sort_keys=True)

    def start(self, instance: Any, ops: Sequence[Op]) -> tuple[Any, dict[str, Any]]:
        """(the instance with its nodes, what to add to the recorded value)."""
        extra: dict[str, Any] = {}
        resolved = instance
        fault = instance.fault
        if fault.role is not None:
            if "{" in fault.role:
                raise NemesisError(
                    f"role {fault.role} has an unbound name: bind the schedule first "
                    "(Schedule.bind(stream=...))"
                )
            answer = self.resolver.resolve(fault.role)
            if fault.kind == "partition":
                from harness.faults import partition as grudges

                every = [int(n.id) for n in getattr(self.cluster, "nodes", ())
                         if getattr(n, "state", "running") != "pending"]
                resolved = fault.against(grudges.isolate(answer.nodes[0], every), every)
            else:
                resolved = fault.on(*answer.nodes)
            self._aimed[self._key(instance)] = resolved
            extra["aim"] = answer.to_json()
        extra["hit"] = self.hit(resolved, ops)
        return resolved, extra

    def stop(self, instance: Any) -> Any:
        """The instance as resolved at its start (a role-aimed stop names no nodes itself)."""
        if instance.fault.role is None:
            return instance
        return self._aimed.pop(self._key(instance), instance)

    def healed(self) -> None:
        self._aimed.clear()

    def hit(self, instance: Any, ops: Sequence[Op]) -> dict[str, Any]:
        fault = instance.fault
        store = fault.kind in STORE_KINDS or (fault.kind == "toxic" and fault.link == "store")
        nodes = list(instance.down or instance.nodes) if fault.kind == "partition" else list(
            instance.nodes)
        hit: dict[str, Any] = {"nodes": nodes, "store": store}
        if not self.resolver._nodes():
            return hit  # a cluster without client endpoints (unit tests of the dispatch)
        try:
            survey = self.resolver.survey(self.resources.scan(ops))
        except Exception as error:  # evidence only: a failed survey never stops the fault
            hit["errors"] = [f"survey: {type(error).__name__}: {error}"]
            return hit
        hit["roles"] = {str(n): roles_of(n, survey) for n in nodes}
        hit.update(survey)
        return hit
