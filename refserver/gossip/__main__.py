"""A gossip-only node: the membership layer of the reference server, without its API.

    python -m refserver.gossip --server-id 1 --address 127.0.0.1 --internal-port 6571 \
        --seed-nodes 127.0.0.1:6571 [--probe-interval-ms 2000 ...] [--defect never-confirm] \
        [--profile hstream-0.20]

Prints `gossip node <id> ready` on stdout once it has joined (or, as one of several
seeds, right away: the cluster waits for `server init`), then runs until SIGTERM/SIGINT.
Exits 2 with one line on stderr when the flags are wrong or the join fails. Tests use
it to kill (SIGKILL), pause (SIGSTOP/SIGCONT) and restart real member processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import grpc

from refserver.defects import UnknownDefect, parse_defects
from refserver.gossip.config import BadSeedList, GossipConfig
from refserver.gossip.node import GossipNode, JoinFailed
from refserver.membership import NodeAddress
from refserver.profiles import PROFILES, UnknownProfile, parse_profile


class CannotListen(RuntimeError):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m refserver.gossip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server-id", type=int, required=True)
    parser.add_argument(
        "--address", default="127.0.0.1", help="address to bind and advertise for gossip"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=6570,
        help="advertised client port (not served by a gossip-only node)",
    )
    parser.add_argument("--internal-port", type=int, default=6571)
    parser.add_argument("--seed-nodes", default=None, help="host[:port],... (default: itself)")
    parser.add_argument("--defect", action="append", default=[], metavar="NAME")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--profile",
        default="protocol",
        help=f"gossip behaviour: {', '.join(sorted(PROFILES))} (see python -m refserver --help)",
    )
    GossipConfig.add_cli_arguments(parser)
    return parser.parse_args(argv)


async def serve(config: GossipConfig) -> None:
    node = GossipNode(config)
    # without this gRPC sets SO_REUSEPORT and a second node would share the port silently
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    node.add_to_server(server)
    me = config.self_node
    where = f"{me.gossip_host}:{me.gossip_port}"
    try:
        server.add_insecure_port(where)
    except RuntimeError as error:
        raise CannotListen(
            f"cannot listen on {where} ({error}); is the port taken or the address not local?"
        ) from None
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await node.start()
        print(f"gossip node {me.id} ready", flush=True)
        await stopping.wait()
    finally:
        await node.stop()
        await server.stop(grace=None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        me = NodeAddress(args.server_id, args.address, args.port, args.address, args.internal_port)
        profile = parse_profile(args.profile)
        config = GossipConfig.from_args(args, me, parse_defects(args.defect), profile)
        asyncio.run(serve(config))
    except (
        BadSeedList,
        UnknownDefect,
        UnknownProfile,
        ValueError,
        JoinFailed,
        CannotListen,
    ) as error:
        print(f"gossip node {args.server_id}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
