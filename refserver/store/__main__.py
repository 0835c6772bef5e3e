"""`python -m refserver.store --data-dir DIR --port P [--bind-address A] [--log-level L]`.

Logs "Store is started on port P" once it serves. Bad input (unknown flag, port in use,
unwritable data dir) gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

import grpc

from refserver.defects import DEFECTS, UnknownDefect, parse_defects
from refserver.protos import Store_pb2_grpc
from refserver.store.engine import StoreEngine
from refserver.store.service import GRPC_OPTIONS, StoreService

log = logging.getLogger("refserver.store")
PROG = "refserver.store"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m {PROG} --help`)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog=f"python -m {PROG}", description="Reference store for refserver nodes.")
    parser.add_argument("--data-dir", required=True, type=Path, help="folder for the database")
    parser.add_argument("--port", required=True, type=int, help="gRPC port to serve on")
    parser.add_argument("--bind-address", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--flush-interval-ms",
        type=int,
        default=500,
        help="how often entries appended with durable=false are committed",
    )
    parser.add_argument(
        "--defect",
        action="append",
        default=[],
        metavar="NAME",
        help="switch on a seeded defect (repeatable); the store acts on those of the store "
        "(fsync-lie, ack-on-sequence) and accepts the others, so a cluster passes every "
        "store the same list: "
        + ", ".join(sorted(DEFECTS)),
    )
    args = parser.parse_args(argv)
    try:
        args.defect = parse_defects(args.defect)
    except UnknownDefect as error:
        parser.error(str(error))
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port (1-65535)")
    if args.flush_interval_ms <= 0:
        parser.error("--flush-interval-ms must be positive")
    return args


def check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"cannot resolve --bind-address {host}: {error}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # Same option gRPC sets, so a port in TIME_WAIT counts as free, as for gRPC.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as error:
            raise UsageError(
                f"cannot listen on {host}:{port}: {error.strerror}; pick a free port"
            ) from None


async def serve(args: argparse.Namespace) -> None:
    engine = StoreEngine(args.data_dir, flush_interval=args.flush_interval_ms / 1000,
                         fsync="fsync-lie" not in args.defect,
                         ack_on_sequence="ack-on-sequence" in args.defect)
    if not engine.fsync:
        log.warning("defect fsync-lie: commits are acknowledged without fsync")
    if engine.ack_on_sequence:
        log.warning("defect ack-on-sequence: appends are answered before their commit")
    try:
        engine.open()
    except (OSError, sqlite3.Error) as error:
        raise UsageError(
            f"cannot open the store database in --data-dir {args.data_dir}: {error}; "
            "give a writable folder"
        ) from None
    # SO_REUSEPORT is on by default in gRPC: two stores would silently share a port.
    server = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    Store_pb2_grpc.add_StoreServicer_to_server(StoreService(engine), server)
    address = f"{args.bind_address}:{args.port}"
    # Checked first so a busy port gives our one-line error, not gRPC's C-core log.
    check_port_free(args.bind_address, args.port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise UsageError(f"cannot listen on {address}: port in use or address not local")
    engine.start()
    await server.start()
    log.info("Store is started on port %d", args.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("Store is stopping")
    await server.stop(grace=1.0)
    await engine.close()
    stats = engine.stats
    log.info(
        "Store stats: appends=%d commits=%d largest_commit=%d",
        stats.appends,
        stats.commits,
        stats.largest_commit,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        asyncio.run(serve(args))
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
