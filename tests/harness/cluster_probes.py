"""Probes the harness's own tests use from outside a cluster: gRPC calls, labelled processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from HStream.Server import HStreamApi_pb2, HStreamApi_pb2_grpc

from harness.cleanup import REPORTS_ENV
from harness.topology import SESSION_ENV


def pids_labelled(label: str) -> list[int]:
    """Every live process whose environment carries the session label `label`."""
    wanted = f"{SESSION_ENV}={label}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> None:
    """Polls `check` until it returns something true; else fails naming the last answer."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return
        except Exception as exc:  # the probe's failure is the evidence we report
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout_s}s; last probe: {last!r}")


def echo_fails(url: str) -> grpc.StatusCode | None:
    """The status code Echo fails with through `url`, or None when it answers."""
    try:
        call_echo(url, timeout_s=1.0)
    except grpc.RpcError as exc:
        return exc.code()
    return None


def call_echo(url: str, timeout_s: float = 2.0) -> str:
    """Echo through `hstream://host:port`; returns the echoed text or raises grpc.RpcError."""
    with grpc.insecure_channel(url.removeprefix("hstream://")) as channel:
        reply = HStreamApi_pb2_grpc.HStreamApiStub(channel).Echo(
            HStreamApi_pb2.EchoRequest(msg="ping"), timeout=timeout_s
        )
    return str(reply.msg)


def describe_cluster(url: str, timeout_s: float = 2.0) -> HStreamApi_pb2.DescribeClusterResponse:
    from google.protobuf import empty_pb2

    with grpc.insecure_channel(url.removeprefix("hstream://")) as channel:
        return HStreamApi_pb2_grpc.HStreamApiStub(channel).DescribeCluster(
            empty_pb2.Empty(), timeout=timeout_s
        )


def subprocess_env(reports: Path) -> dict[str, str]:
    """The environment for a child run that must use `reports` and choose its own session."""
    env = dict(os.environ)
    env[REPORTS_ENV] = str(reports)
    env.pop(SESSION_ENV, None)
    return env
