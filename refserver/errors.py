"""HStreamDB's error encoding: a gRPC status whose message is JSON text.

`{"error": <code>, "message": <text>, "extra": <json>}` with the codes of the protocol
page §6; clients parse the number, people read the text.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc

STREAM_NOT_FOUND = 200
STREAM_EXISTS = 201
STREAM_HAS_SUBSCRIPTIONS = 202
INVALID_REPLICA_FACTOR = 203
INVALID_STREAM_NAME = 204
INVALID_SHARD_COUNT = 205
EMPTY_BATCHED_RECORD = 206
INVALID_RECORD_SIZE = 207
INVALID_SHARD_OFFSET = 208
SUBSCRIPTION_NOT_FOUND = 300
SUBSCRIPTION_EXISTS = 301
NON_EXISTENT_STREAM = 302
INVALID_SUBSCRIPTION_ID = 304
SUBSCRIPTION_HAS_CONSUMERS = 305
WRONG_SERVER = 800
INVALID_SHARD_READER_ID = 900
CONFLICT_SHARD_READER_OFFSET = 901


class HStreamError(Exception):
    """An error to send to the client with its gRPC status and HStreamDB error code."""

    def __init__(
        self, status: grpc.StatusCode, code: int, message: str, extra: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def details(self) -> str:
        return encode(self.code, self.message, self.extra)


def encode(code: int, message: str, extra: Any = None) -> str:
    return json.dumps({"error": code, "message": message, "extra": extra})


async def abort(context: grpc.aio.ServicerContext, error: HStreamError) -> NoReturn:
    await context.abort(error.status, error.details())
    raise AssertionError("unreachable: context.abort raises")


class UnknownAdminCommand(ValueError):
    """SendAdminCommand got a command that does not parse (raised only under profile
    hstream-0.20, whose API answers it with INTERNAL; the protocol profile answers an
    "error" result instead)."""

    def __init__(self, command: str) -> None:
        super().__init__(command)
        self.command = command
