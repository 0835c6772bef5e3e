"""What the API layer shows of membership: node_states (DescribeCluster) and `server status`
through a member's failure, in one event loop over real gRPC."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from refserver.gossip import GossipConfig, GossipNode
from refserver.membership import MemberState, NodeAddress

BASE = 17400


def node_address(node_id: int) -> NodeAddress:
    host = f"127.0.0.{node_id}"
    return NodeAddress(node_id, host, BASE + 50, host, BASE)


async def scenario() -> None:
    seeds = [("127.0.0.1", BASE)]
    nodes: list[GossipNode] = []
    servers: list[grpc.aio.Server] = []
    try:
        for i in (1, 2, 3):
            config = GossipConfig(
                self_node=node_address(i),
                seeds=seeds,
                probe_interval=0.3,
                roundtrip_timeout=0.1,
                gossip_interval=0.2,
                suspicion_mult=8,
                reconnect_interval=1.0,
            )
            node = GossipNode(config)
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            node.add_to_server(server)
            server.add_insecure_port(f"127.0.0.{i}:{BASE}")
            await server.start()
            nodes.append(node)
            servers.append(server)
            await node.start()
        observer = nodes[0]
        deadline = time.monotonic() + 10
        while len([s for _, s in observer.node_states() if s == "Running"]) < 3:
            assert time.monotonic() < deadline, observer.node_states()
            await asyncio.sleep(0.05)

        # node 3 disappears without a word: its server stops answering at once
        await servers[2].stop(None)
        await nodes[2].stop()
        seen_suspect = False
        deadline = time.monotonic() + 15
        while observer.members()[3].state is not MemberState.DEAD:
            if observer.members()[3].state is MemberState.SUSPECT:
                seen_suspect = True
                states = dict((n.id, s) for n, s in observer.node_states())
                assert 3 not in states, f"a suspect is in neither list: {states}"
                assert [n.id for n in observer.alive()] == [1, 2]
            assert time.monotonic() < deadline, observer.members()
            await asyncio.sleep(0.02)
        assert seen_suspect, "node 3 went dead without being suspected first"
        assert observer.node_states() == [
            (node_address(1), "Running"),
            (node_address(2), "Running"),
            (node_address(3), "Dead"),
        ]
        status = json.loads(await observer.admin("server status"))
        assert status == {
            "type": "table",
            "content": {
                "headers": ["Node ID", "State", "Address"],
                "rows": [
                    ["1", "Running", f"127.0.0.1:{BASE + 50}"],
                    ["2", "Running", f"127.0.0.2:{BASE + 50}"],
                    ["3", "Dead", f"127.0.0.3:{BASE + 50}"],
                ],
            },
        }
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
        await asyncio.gather(*(s.stop(None) for s in servers), return_exceptions=True)


def test_suspects_leave_describe_cluster_and_the_dead_are_listed_dead() -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))
