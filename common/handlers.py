"""Wrapping a gRPC method handler, for the server interceptors that act before a call runs.

The authorisation check (common/authz.py), the stream caps (common/limits.py) and the
refusal of undecodable requests (common/decoding.py) each return the handler they were
given with its behaviour inside a *guard*: an async context manager entered with the
request before the behaviour runs (it may abort the call there) and left once the
behaviour finished, a stream's after its last reply. What the guard yields is what the
behaviour receives, so a guard may also stand between a request stream and its reader.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

# (request or request iterator, context) -> what the behaviour is called with.
Guard = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[Any]]


def guarded(
    handler: grpc.RpcMethodHandler,
    guard: Guard,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run inside ``guard``; its request deserializer
    replaced by ``request_deserializer`` when one is given."""
    serializers = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if not handler.response_streaming:
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with guard(request, context) as admitted:
                return await inner(admitted, context)

        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary, **serializers)
        return grpc.unary_unary_rpc_method_handler(unary, **serializers)

    inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with guard(request, context) as admitted:
            async for reply in _replies(inner(admitted, context)):
                yield reply

    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **serializers)
    return grpc.unary_stream_rpc_method_handler(streaming, **serializers)


async def _replies(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's replies, whether it yields them or writes them itself."""
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for reply in result:
            yield reply
    elif inspect.isawaitable(result):
        await result  # it wrote its replies through context.write
    else:
        for reply in result:
            yield reply
