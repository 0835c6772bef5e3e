"""Send one HStreamDB admin command (`SendAdminCommand`) and print the server's result; or
ask servers about membership and lookups, for the steps a target runs around its nodes.

    python -m harness.targets.admin_command --host 127.0.0.11:6570 "server init"
    python -m harness.targets.admin_command --host H:P [--host H2:P2 ...] --gone 2
    python -m harness.targets.admin_command --host H:P --lookup-key some-key

An admin command makes the same call as `hadmin server --host <node> init|ready|status`,
over the public HStreamApi, so it works against any target. It prints the result text (a
JSON document `{"type": "table"|"plain"|"error", "content": ...}`); exit status 0 when the
RPC succeeded (whatever the result's type: match the text), 1 with the gRPC status on stderr
when it did not.

`--token T` is sent as `authorization: Basic T`, verbatim. A real HStreamDB server compares
that header byte for byte with "Basic " + each token of its config, and its config holds
base64 of `user:password` (hs-grpc `HsGrpc/Server/Types.hsc`), so pass the base64 value
there; `hadmin` itself sends no credentials (hstream-admin `.../Server/Command.hs`).

`--gone N` calls DescribeCluster on every `--host` and succeeds (exit 0) when node N is in
none of the answering hosts' member lists (`serverNodes`: the real server lists only alive
members there, hstream-gossip `HStream/Gossip.hs` describeCluster, and refuses a join of an
id it still holds alive with DuplicateNodeId, `Gossip/Server/Handlers.hs` sendJoinCore).
A host that does not answer (UNAVAILABLE, DEADLINE_EXCEEDED: down, paused, not started yet)
is skipped: a joining node that cannot reach a seed tries the next one, so only peers that
answer can refuse it. Any other failure (e.g. CANCELLED for a refused token) fails the call.

`--lookup-key K` calls LookupKey and succeeds once the server answers: a real server blocks
every lookup for about 5 s after it starts (`HStream/Common/Server/HashRing.hs`
updateHashRing), so a lookup with a short `--timeout` that returns proves lookups work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import empty_pb2
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

# A peer in these states cannot answer now; it cannot refuse a join either (--gone skips it).
NOT_ANSWERING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Basic {token}"),) if token else None


def send_admin_command(
    host: str, command: str, token: str | None = None, timeout_s: float = 5.0
) -> str:
    with grpc.insecure_channel(host) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        response = stub.SendAdminCommand(
            HStreamApi_pb2.AdminCommandRequest(command=command),
            timeout=timeout_s,
            metadata=_metadata(token),
        )
    return str(response.result)


def describe_members(
    host: str, token: str | None = None, timeout_s: float = 5.0
) -> tuple[list[int], dict[int, str]]:
    """DescribeCluster on one host: the ids of its member list (`serverNodes`) and the state
    its status table gives every node it knows (`serverNodesStatus`, dead ones included)."""
    with grpc.insecure_channel(host) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        response = stub.DescribeCluster(
            empty_pb2.Empty(), timeout=timeout_s, metadata=_metadata(token)
        )
    members = [node.id for node in response.serverNodes]
    states = {
        status.node.id: HStreamApi_pb2.NodeState.Name(status.state)
        for status in response.serverNodesStatus
    }
    return members, states


def lookup_key(host: str, key: str, token: str | None = None, timeout_s: float = 5.0) -> str:
    with grpc.insecure_channel(host) as channel:
        stub = HStreamApi_pb2_grpc.HStreamApiStub(channel)
        node = stub.LookupKey(
            HStreamApi_pb2.LookupKeyRequest(partitionKey=key),
            timeout=timeout_s,
            metadata=_metadata(token),
        )
    return f"node {node.id} at {node.host}:{node.port}"


def _failure(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return code, f"{code.name if code else '?'}: {details}"


def wait_gone(hosts: Sequence[str], node_id: int, token: str | None, timeout_s: float) -> int:
    """One check of `--gone`: 0 when no answering host lists node_id as a member."""
    holders: list[str] = []
    for host in hosts:
        try:
            members, states = describe_members(host, token, timeout_s)
        except grpc.RpcError as exc:
            code, text = _failure(exc)
            if code in NOT_ANSWERING:
                print(f"{host}: not answering ({text}); skipped")
                continue
            print(f"{host}: DescribeCluster failed: {text}", file=sys.stderr)
            return 1
        known = ", ".join(f"{i}={state}" for i, state in sorted(states.items()))
        print(f"{host}: members {sorted(members)}; states {known or '-'}")
        if node_id in members:
            holders.append(host)
    if holders:
        print(f"node {node_id} is still a member at {', '.join(holders)}", file=sys.stderr)
        return 1
    print(f"node {node_id} is gone from every answering peer's member list")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", required=True, action="append",
                        help="host:port of a server's client port (repeat for --gone)")
    parser.add_argument("--token", default=None,
                        help="sent verbatim as 'authorization: Basic <token>'")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for each RPC")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("command", nargs="?",
                      help='admin command, e.g. "server init", "server ready", "server status"')
    mode.add_argument("--gone", type=int, metavar="NODE_ID",
                      help="succeed when no answering host lists NODE_ID as a member")
    mode.add_argument("--lookup-key", metavar="KEY",
                      help="succeed when the host answers LookupKey(KEY) within --timeout")
    args = parser.parse_args(argv)
    if args.gone is not None:
        return wait_gone(args.host, args.gone, args.token, args.timeout)
    if len(args.host) != 1:
        parser.error("an admin command or --lookup-key goes to exactly one --host")
    host = args.host[0]
    what = f"LookupKey({args.lookup_key!r})" if args.lookup_key is not None \
        else repr(args.command)
    try:
        if args.lookup_key is not None:
            print(lookup_key(host, args.lookup_key, args.token, args.timeout))
        else:
            print(send_admin_command(host, args.command, args.token, args.timeout))
    except grpc.RpcError as exc:
        print(f"{what} on {host} failed: {_failure(exc)[1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
