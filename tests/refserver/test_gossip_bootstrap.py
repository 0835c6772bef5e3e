"""Bootstrap of GossipNodes in one event loop, over real gRPC on loopback addresses.

Single seed (others join), several seeds (`server init`, INIT/INITED), duplicate ids,
unreachable seeds, and what CliCluster and the admin commands report.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from harness.protos import HStreamGossip_pb2, HStreamGossip_pb2_grpc
from refserver.gossip import GossipConfig, GossipNode, JoinFailed, decode_view
from refserver.gossip.wire import EVENT_INIT
from refserver.membership import MemberState, NodeAddress
from refserver.routing import owner

GOSSIP_INTERVAL = 0.2
PROBE_INTERVAL = 0.3


def fast(me: NodeAddress, seeds: list[tuple[str, int]], join_timeout: float = 5.0) -> GossipConfig:
    return GossipConfig(
        self_node=me,
        seeds=seeds,
        probe_interval=PROBE_INTERVAL,
        roundtrip_timeout=0.1,
        gossip_interval=GOSSIP_INTERVAL,
        join_timeout=join_timeout,
        reconnect_interval=1.0,
    )


def address(node_id: int, port_base: int) -> NodeAddress:
    # one loopback address per node, so a node's address says which node it is
    host = f"127.0.0.{node_id}"
    return NodeAddress(node_id, host, port_base + 50, host, port_base)


@asynccontextmanager
async def cluster(
    configs: list[GossipConfig],
) -> AsyncIterator[list[GossipNode]]:
    """Serve every node's gossip port; the test starts the nodes. Always cleans up."""
    nodes, servers = [], []
    try:
        for config in configs:
            node = GossipNode(config)
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            node.add_to_server(server)
            me = config.self_node
            server.add_insecure_port(f"{me.gossip_host}:{me.gossip_port}")
            await server.start()
            nodes.append(node)
            servers.append(server)
        yield nodes
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
        await asyncio.gather(*(s.stop(None) for s in servers), return_exceptions=True)


def views(nodes: list[GossipNode]) -> dict[int, dict[int, str]]:
    return {
        n.self_node.id: {m: member.state.value for m, member in sorted(n.members().items())}
        for n in nodes
    }


async def wait_until(
    condition: Callable[[], bool], timeout: float, what: Callable[[], str]
) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {what()}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def all_alive(nodes: list[GossipNode]) -> bool:
    ids = {n.self_node.id for n in nodes}
    return all(
        set(n.members()) == ids and all(m.state is MemberState.ALIVE for m in n.members().values())
        for n in nodes
    )


def run(coroutine: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.mark.parametrize("size", [3, 5])
def test_single_seed_cluster_converges(size: int) -> None:
    base = 17000 + size * 10
    seeds = [("127.0.0.1", base)]
    configs = [fast(address(i, base), seeds) for i in range(1, size + 1)]

    async def scenario() -> None:
        async with cluster(configs) as nodes:
            for node in nodes:
                await node.start()
                assert node.is_ready()
            took = await wait_until(lambda: all_alive(nodes), 10, lambda: str(views(nodes)))
            # dissemination is O(log n) gossip rounds; 10 rounds is generous on a busy box
            assert took < 10 * GOSSIP_INTERVAL + 2, (took, views(nodes))
            alive_sets = {tuple(n.alive()) for n in nodes}
            assert len(alive_sets) == 1, alive_sets
            for key in ("orders", "clicks", "17"):
                owners = {owner(key, n.alive()) for n in nodes}
                assert len(owners) == 1, (key, owners)
            # stays converged over several probe rounds (no false suspicion when all answer)
            await asyncio.sleep(6 * PROBE_INTERVAL)
            assert all_alive(nodes), views(nodes)

    run(scenario())


@pytest.mark.parametrize("seed_count", [3, 5], ids=["3-seeds-2-joiners", "all-5-seeds"])
def test_several_seeds_wait_for_init_then_all_become_ready(seed_count: int) -> None:
    base = 17100 + seed_count
    seeds = [(f"127.0.0.{i}", base) for i in range(1, seed_count + 1)]
    configs = [fast(address(i, base), seeds) for i in range(1, 6)]

    async def scenario() -> None:
        async with cluster(configs) as nodes:
            seed_nodes, joiners = nodes[:seed_count], nodes[seed_count:]
            await asyncio.gather(*(n.start() for n in seed_nodes))
            joining = [asyncio.ensure_future(n.start()) for n in joiners]
            await asyncio.sleep(1.0)
            assert not any(n.is_ready() for n in nodes), "ready before `server init`"
            assert not any(j.done() for j in joining), "a non-seed joined an uninitialised cluster"
            ready = json.loads(await nodes[0].admin("server ready"))
            assert ready == {"type": "error", "content": "Cluster is not ready!"}
            status = json.loads(await nodes[0].admin("server status"))
            assert status["content"]["rows"][0] == ["1", "Starting", f"127.0.0.1:{base + 50}"]

            init = json.loads(await nodes[1].admin("server init"))
            assert init == {"type": "plain", "content": "Server successfully received init signal"}
            await asyncio.gather(*joining)
            await wait_until(
                lambda: all(n.is_ready() for n in nodes),
                10,
                lambda: str([n.is_ready() for n in nodes]),
            )
            await wait_until(lambda: all_alive(nodes), 10, lambda: str(views(nodes)))
            assert json.loads(await nodes[2].admin("server ready"))["content"] == "Cluster is ready"
            status = json.loads(await nodes[4].admin("server status"))
            assert status["type"] == "table"
            assert status["content"]["headers"] == ["Node ID", "State", "Address"]
            assert sorted(status["content"]["rows"]) == [
                [str(i), "Running", f"127.0.0.{i}:{base + 50}"] for i in range(1, 6)
            ]
            bad = json.loads(await nodes[0].admin("server frobnicate"))
            assert bad["type"] == "error" and "server status" in bad["content"]

    run(scenario())


def test_cli_cluster_reports_states_and_incarnations() -> None:
    base = 17200
    seeds = [("127.0.0.1", base)]
    configs = [fast(address(i, base), seeds) for i in (1, 2)]

    async def scenario() -> None:
        async with cluster(configs) as nodes:
            for node in nodes:
                await node.start()
            await wait_until(lambda: all_alive(nodes), 10, lambda: str(views(nodes)))
            async with grpc.aio.insecure_channel(f"127.0.0.2:{base}") as channel:
                stub = HStreamGossip_pb2_grpc.HStreamGossipStub(channel)
                answer = await stub.CliCluster(HStreamGossip_pb2.Empty(), timeout=5)
            assert [m.id for m in answer.members] == [2, 1], "self first, then by id"
            assert decode_view(answer) == {
                2: (MemberState.ALIVE, nodes[1].incarnation),
                1: (MemberState.ALIVE, nodes[0].incarnation),
            }

    run(scenario())


def test_duplicate_id_of_a_live_member_is_refused() -> None:
    base = 17230
    seeds = [("127.0.0.1", base)]
    first = fast(address(1, base), seeds)
    second = fast(address(2, base), seeds)
    # same id 2, another address: a second live process claiming the id
    impostor_address = NodeAddress(2, "127.0.0.9", base + 50, "127.0.0.9", base)
    impostor = fast(impostor_address, seeds)

    async def scenario() -> None:
        async with cluster([first, second, impostor]) as (n1, n2, n3):
            await n1.start()
            await n2.start()
            with pytest.raises(JoinFailed, match="a live member already has this id"):
                await n3.start()
            assert n1.members()[2].node == address(2, base)

    run(scenario())


def test_unreachable_seeds_fail_the_join_with_one_clear_error() -> None:
    base = 17260
    me = NodeAddress(4, "127.0.0.4", base + 50, "127.0.0.4", base)
    config = fast(me, [("127.0.0.1", base), ("127.0.0.2", base)], join_timeout=1.0)

    async def scenario() -> None:
        async with cluster([config]) as (node,):
            started = time.monotonic()
            with pytest.raises(JoinFailed) as failure:
                await node.start()
            took = time.monotonic() - started
            text = str(failure.value)
            assert "no seed accepted" in text and "127.0.0.1:17260" in text, text
            assert "127.0.0.2:17260" in text and "UNAVAILABLE" in text, text
            assert took < 1.0 + 3.0, f"join gave up after {took:.1f} s, timeout was 1 s"
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not [t for t in left if "GossipNode" in repr(t)], left

    run(scenario())


def test_a_seed_named_by_host_name_recognises_itself() -> None:
    # The seed list says "localhost", the node advertises 127.0.0.1: like the real server,
    # the node finds out it is that seed because its own BootstrapPing answers with itself.
    base = 17280
    seeds = [("localhost", base)]
    configs = [fast(address(1, base), seeds), fast(address(2, base), seeds)]

    async def scenario() -> None:
        async with cluster(configs) as nodes:
            await nodes[0].start()
            assert nodes[0].is_ready(), "the only seed should be ready at once"
            await nodes[1].start()
            await wait_until(lambda: all_alive(nodes), 10, lambda: str(views(nodes)))

    run(scenario())


def test_a_seed_that_misses_every_init_send_still_gets_the_cluster_ready() -> None:
    # INIT is piggybacked a bounded number of times; a seed that misses all of them never
    # sends INITED, and then no seed could ever become ready. Node 3 here loses every INIT
    # for longer than those sends last: the seeds must repeat INIT until they are ready.
    base = 17140
    seeds = [(f"127.0.0.{i}", base) for i in range(1, 4)]
    configs = [fast(address(i, base), seeds) for i in range(1, 4)]
    lost_for = 3.0

    async def scenario() -> None:
        async with cluster(configs) as nodes:
            await asyncio.gather(*(n.start() for n in nodes))
            deaf = nodes[2]
            receive = deaf._apply_event
            until = time.monotonic() + lost_for
            dropped = []

            def lossy(event: HStreamGossip_pb2.EventMessage) -> None:
                if event.name == EVENT_INIT and time.monotonic() < until:
                    dropped.append(event.lamportTime)
                    return
                receive(event)

            deaf._apply_event = lossy  # type: ignore[method-assign]
            await nodes[0].admin("server init")
            took = await wait_until(
                lambda: all(n.is_ready() for n in nodes),
                lost_for + 10,
                lambda: f"ready: {[n.is_ready() for n in nodes]}; INIT dropped {len(dropped)}x",
            )
            assert dropped and took > lost_for

    run(scenario())
