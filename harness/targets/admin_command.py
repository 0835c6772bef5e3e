"""Send one HStreamDB admin command (`SendAdminCommand`) and print the server's result.

    python -m harness.targets.admin_command --host 127.0.0.11:6570 "server init"

The same call `hadmin server --host <node> init` makes, over the public HStreamApi, so it
works against any target. Prints the result text (a JSON document
`{"type": "table"|"plain"|"error", "content": ...}`); exit status 0 when the RPC succeeded,
1 with the gRPC status on stderr when it did not.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc


def send_admin_command(
    host: str, command: str, token: str | None = None, timeout_s: float = 5.0
) -> str:
    metadata = (("authorization", f"Basic {token}"),) if token else None
    with grpc.insecure_channel(host) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        response = stub.SendAdminCommand(
            HStreamApi_pb2.AdminCommandRequest(command=command),
            timeout=timeout_s,
            metadata=metadata,
        )
    return str(response.result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="host:port of a server's client port")
    parser.add_argument("--token", default=None, help="sent as 'authorization: Basic <token>'")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the RPC")
    parser.add_argument("command", help='e.g. "server init", "server ready", "server status"')
    args = parser.parse_args(argv)
    try:
        print(send_admin_command(args.host, args.command, args.token, args.timeout))
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else "?"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"{args.command!r} on {args.host} failed: {code}: {details}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
