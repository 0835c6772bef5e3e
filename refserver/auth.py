"""Token authentication for the client API (the real server's `hserver.tokens`).

With tokens configured, every call must carry `authorization: Basic <token>` naming a
listed token; anything else is refused with UNAUTHENTICATED before the RPC runs. Clients
differ in what they put after "Basic ": the token itself, or (the Erlang client, HTTP
Basic style) base64 of `user:password`; both forms are accepted, so a configured token
`hstream:hstream` admits either spelling.

Profile hstream-0.20 does what hs-grpc does: the header must equal "Basic " + a listed
token byte for byte (HsGrpc/Server/Types.hsc:438-439; the real config holds the base64
value, so list that), and a refused call is cancelled, which the client sees as
CANCELLED (include/hsgrpc/auth.hpp:37-53; UNAUTHENTICATED only with TLS, which the
reference server does not serve).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from refserver import errors
from refserver.profiles import PROTOCOL, Profile

UNAUTHENTICATED_CODE = 0


def parse_tokens(text: str | None) -> frozenset[str]:
    return frozenset(t.strip() for t in (text or "").split(",") if t.strip())


def _header(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key.lower() == "authorization":
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


def _presented(metadata: Iterable[tuple[str, Any]]) -> str | None:
    text = _header(metadata)
    if text is None:
        return None
    scheme, _, credential = text.partition(" ")
    return credential.strip() if scheme.lower() == "basic" else None


def accepts(tokens: frozenset[str], credential: str | None) -> bool:
    if credential is None:
        return False
    if credential in tokens:
        return True
    try:
        decoded = base64.b64decode(credential, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return decoded in tokens


def accepts_verbatim(tokens: frozenset[str], header: str | None) -> bool:
    return header is not None and any(header == f"Basic {token}" for token in tokens)


def _refusal(
    kind: tuple[bool, bool], method: str, status: grpc.StatusCode
) -> grpc.RpcMethodHandler:
    if status is grpc.StatusCode.CANCELLED:
        details = "Cancelled"  # what a cancelled call reports, as the real server's does
    else:
        details = errors.encode(
            UNAUTHENTICATED_CODE,
            f"{method}: missing or unknown token; send the metadata "
            "`authorization: Basic <token>` with a token the server was started with "
            "(--tokens)",
        )

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(status, details)

    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return factory(refuse)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: frozenset[str], profile: Profile = PROTOCOL) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self.tokens = tokens
        self.profile = profile

    def admits(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        if self.profile.tokens_verbatim:
            return accepts_verbatim(self.tokens, _header(metadata))
        return accepts(self.tokens, _presented(metadata))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or self.admits(handler_call_details.invocation_metadata or ()):
            return handler
        kind = (handler.request_streaming, handler.response_streaming)
        return _refusal(kind, handler_call_details.method, self.profile.auth_refusal)
