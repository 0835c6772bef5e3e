"""One gRPC handler for the whole `hstream.server.HStreamApi` service.

Handlers are generated from the service descriptor of the official stubs: each RPC goes
to the first component that has a method of that name, and every RPC no component
implements answers UNIMPLEMENTED naming the RPC, so the list cannot drift from the proto.
HStreamError raised anywhere becomes the JSON-coded status of protocol §6.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from HStream.Server import HStreamApi_pb2 as api

from refserver import errors
from refserver.errors import HStreamError

log = logging.getLogger(__name__)

SERVICE = api.DESCRIPTOR.services_by_name["HStreamApi"]


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            errors.encode(0, f"{name} is not implemented by the reference server"),
        )

    return handler


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(request, context)
        except HStreamError as error:
            await errors.abort(context, error)

    return handler


def _streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in method(request, context):
                yield response
        except HStreamError as error:
            await errors.abort(context, error)

    return handler


def implemented_rpcs(components: Sequence[object]) -> list[str]:
    return [m.name for m in SERVICE.methods if any(hasattr(c, m.name) for c in components)]


def build_handler(components: Sequence[object]) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        target = next(
            (getattr(c, method.name) for c in components if hasattr(c, method.name)), None
        )
        kinds = (method.client_streaming, method.server_streaming)
        if target is None:
            # Streaming RPCs get a unary-shaped reply too: the abort ends the call either way.
            behaviour = _unimplemented(method.name)
            factory = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[kinds]
        elif kinds == (False, False):
            behaviour, factory = _unary(target), grpc.unary_unary_rpc_method_handler
        elif kinds == (False, True):
            behaviour, factory = _streaming(target), grpc.unary_stream_rpc_method_handler
        elif kinds == (True, True):
            behaviour, factory = _streaming(target), grpc.stream_stream_rpc_method_handler
        else:
            behaviour, factory = _unary(target), grpc.stream_unary_rpc_method_handler
        handlers[method.name] = factory(
            behaviour,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
