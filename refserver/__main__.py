"""`python -m refserver`: one reference HServer node, with hstream-server's flag names.

    python -m refserver --server-id 1 --port 6570 --internal-port 6571 \
        --bind-address 127.0.0.1 --seed-nodes 127.0.0.1:6571 --store 127.0.0.1:6440

Logs "Server is started on port N" once it serves; SIGTERM/SIGINT stop it cleanly.
`python -m refserver --list-defects` prints the names `--defect` accepts, one a line;
`--list-profiles` the names `--profile` accepts: `protocol` (the default, the
protocol-correct server) or `hstream-0.20` (what the real hstream-server v0.20.3 does where
it differs; refserver.profiles names the HStreamDB source of each behaviour).
Bad input (unknown flag, port in use, store unreachable, a seed list nobody answers
within the join timeout) → one line on stderr and a non-zero exit code (2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from refserver.auth import parse_tokens
from refserver.defects import DEFECTS, UnknownDefect, parse_defects
from refserver.gossip.config import BadSeedList, GossipConfig
from refserver.gossip.node import JoinFailed
from refserver.io.catalog import CatalogError, ConnectorCatalog
from refserver.membership import NodeAddress
from refserver.node import NodeSettings, RefServerNode, StartupError, run_until_signalled
from refserver.profiles import PROFILES, UnknownProfile, parse_profile

PROG = "refserver"
WILDCARDS = ("0.0.0.0", "::", "")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise StartupError(f"{message} (see `python -m {PROG} --help`)")


class _ListNames(argparse.Action):
    """Print names (of defects, of profiles) and exit, like --version: the required flags
    do not apply.

    Clients (the harness's reference target) learn the accepted names from here rather than
    from this package's internals, so the server stays a black box to them.
    """

    def __init__(
        self, option_strings: list[str], dest: str, names: list[str], **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.names = names

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print("\n".join(self.names))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server-id", type=int, required=True, help="unique node id")
    parser.add_argument("--port", type=int, default=6570, help="client API port")
    parser.add_argument("--internal-port", type=int, default=6571, help="gossip port")
    parser.add_argument("--bind-address", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--advertised-address",
        default=None,
        help="client address given to others (default: --bind-address)",
    )
    parser.add_argument(
        "--advertised-port",
        type=int,
        default=None,
        help="client port given to others, e.g. a proxy's (extension; default: --port)",
    )
    parser.add_argument(
        "--gossip-address",
        default=None,
        help="gossip address given to others (default: --advertised-address)",
    )
    parser.add_argument(
        "--advertised-gossip-port",
        type=int,
        default=None,
        help="gossip port given to others (extension; default: --internal-port)",
    )
    parser.add_argument(
        "--seed-nodes",
        default=None,
        help="host[:port],... of the seed nodes' gossip ports (default: this node)",
    )
    parser.add_argument("--store", required=True, help="host:port of python -m refserver.store")
    parser.add_argument("--tokens", default=None, help="t1,t2,...: require one of these")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--defect",
        action="append",
        default=[],
        metavar="NAME",
        help=f"switch on a seeded defect (repeatable): {', '.join(sorted(DEFECTS))}",
    )
    parser.add_argument(
        "--list-defects",
        action=_ListNames,
        names=sorted(DEFECTS),
        help="print the names --defect accepts, one a line, and exit",
    )
    parser.add_argument(
        "--profile",
        default="protocol",
        metavar="NAME",
        help="whose behaviour to show: "
        + "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values())
        + " (default: protocol)",
    )
    parser.add_argument(
        "--list-profiles",
        action=_ListNames,
        names=sorted(PROFILES),
        help="print the names --profile accepts, one a line, and exit",
    )
    parser.add_argument(
        "--max-record-size",
        type=int,
        default=1024 * 1024,
        help="largest accepted batch payload in bytes",
    )
    parser.add_argument(
        "--io-connectors",
        type=Path,
        default=os.environ.get("REFSERVER_IO_CONNECTORS") or None,
        metavar="FILE",
        help="JSON connector catalogue for HStream IO (default: $REFSERVER_IO_CONNECTORS; "
        "none: no connector can be created)",
    )
    GossipConfig.add_cli_arguments(parser)
    return parser


def settings_from(argv: list[str]) -> NodeSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("port", "internal_port", "advertised_port", "advertised_gossip_port"):
        value = getattr(args, flag)
        if value is not None and not 0 < value < 65536:
            parser.error(f"--{flag.replace('_', '-')} {value} is not a TCP port (1-65535)")
    if args.max_record_size <= 0:
        parser.error("--max-record-size must be positive")
    advertised = args.advertised_address or (
        "127.0.0.1" if args.bind_address in WILDCARDS else args.bind_address
    )
    try:
        defects = parse_defects(args.defect)
        profile = parse_profile(args.profile)
        node = NodeAddress(
            id=args.server_id,
            host=advertised,
            port=args.advertised_port or args.port,
            gossip_host=args.gossip_address or advertised,
            gossip_port=args.advertised_gossip_port or args.internal_port,
        )
        gossip = GossipConfig.from_args(args, node, defects, profile)
        connectors = (
            ConnectorCatalog.load(args.io_connectors) if args.io_connectors else ConnectorCatalog()
        )
    except (BadSeedList, UnknownDefect, UnknownProfile, CatalogError, ValueError) as error:
        parser.error(str(error))
    return NodeSettings(
        server_id=args.server_id,
        port=args.port,
        internal_port=args.internal_port,
        bind_address=args.bind_address,
        advertised_address=advertised,
        advertised_port=args.advertised_port or args.port,
        gossip_address=args.gossip_address or advertised,
        advertised_gossip_port=args.advertised_gossip_port or args.internal_port,
        store=args.store,
        tokens=parse_tokens(args.tokens),
        defects=defects,
        max_record_size=args.max_record_size,
        gossip=gossip,
        connectors=connectors,
        log_level=args.log_level,
        profile=profile,
        gossip_flags=tuple(GossipConfig.flags_given(args)),
    )


async def serve(settings: NodeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_until_signalled(RefServerNode(settings), stop)


def main(argv: list[str] | None = None) -> int:
    # Under the harness's clock layer (libfaketime with a true monotonic clock) Python's
    # time.sleep fails; this swaps it for an equivalent wait (harness.clocklayer).
    from harness.clocklayer import adapt_python_sleep

    adapt_python_sleep()
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv)
        level = settings.log_level.upper()
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        asyncio.run(serve(settings))
    except (StartupError, JoinFailed) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
