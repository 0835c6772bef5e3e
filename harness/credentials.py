"""The run's client credential: what every channel the harness opens sends when the cluster
under test has tokens, so whole suites run against a token cluster.

HStreamDB's clients authenticate with gRPC metadata `authorization: Basic <credential>`,
where the credential is the token as the server holds it (real HStreamDB compares it byte
for byte with an entry of `hserver.tokens`, which holds base64; see
harness.targets.hstream.config_token). `credential_for(spec)` says what that is for a
spec's first token; the pytest plugin makes it the run's credential when the run's cluster
has tokens (`set_run_credential`), and `channel` / `aio_channel` / the drivers' `connect`
send it. A call that must go without it (the token checks' anonymous call) passes
`credential=None`; one that must send another passes that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from harness.topology import ClusterSpec

_RUN: list[str | None] = [None]
# The default of `credential=`: "whatever the run uses" (None means: send nothing).
RUN = "<the run's credential>"


def set_run_credential(credential: str | None) -> None:
    _RUN[0] = credential


def run_credential() -> str | None:
    return _RUN[0]


def credential_for(spec: ClusterSpec) -> str | None:
    """What follows "Basic " for the spec's first token, as its target holds it (None: the
    spec has no tokens)."""
    if not spec.tokens:
        return None
    if spec.target_kind == "hstream":
        from harness.targets.hstream import config_token

        return config_token(spec.tokens[0])
    return spec.tokens[0]  # the reference server holds the token as given


def resolve(credential: str | None) -> str | None:
    return _RUN[0] if credential == RUN else credential


def metadata(credential: str | None = RUN) -> tuple[tuple[str, str], ...]:
    found = resolve(credential)
    return (("authorization", f"Basic {found}"),) if found else ()


def _unless_authorised(details: Any) -> tuple[tuple[str, str], ...] | None:
    """The call's metadata, or None when the caller set its own authorization (it wins)."""
    given = tuple(details.metadata or ())
    return None if any(key == "authorization" for key, _ in given) else given


class _Auth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self.extra = extra

    def _details(self, details: Any) -> Any:
        given = _unless_authorised(details)
        return details if given is None else _Details(details, given + self.extra)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    """Call details with metadata replaced (grpc's own type is an abstract record)."""

    def __init__(self, base: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def channel(
    endpoint: str, options: Sequence[tuple[str, Any]] = (), credential: str | None = RUN
) -> grpc.Channel:
    """An insecure channel that sends the credential (the run's by default) on every call."""
    plain = grpc.insecure_channel(endpoint, options=list(options))
    extra = metadata(credential)
    return grpc.intercept_channel(plain, _Auth(extra)) if extra else plain


class _AioAuth(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self.extra = extra

    def _details(self, details: Any) -> Any:
        given = _unless_authorised(details)
        if given is None:
            return details
        return details._replace(metadata=grpc.aio.Metadata(*given, *self.extra))

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def aio_channel(endpoint: str, credential: str | None = RUN) -> grpc.aio.Channel:
    """The asyncio twin of `channel`."""
    extra = metadata(credential)
    interceptors = [_AioAuth(extra)] if extra else None
    return grpc.aio.insecure_channel(endpoint, interceptors=interceptors)
