"""Requests whose bytes are not the message their method takes: INVALID_ARGUMENT, quietly.

gRPC decodes a request before any handler runs; left to itself, a body that does not
parse ends the call with UNKNOWN ("Unexpected <class 'DecodeError'>") and an ERROR
with a traceback in the server's log, one per request: anyone could fill the log.
:class:`DecodeGuard` gives every method a deserializer that turns a parse failure into
an :class:`Undecodable` marker instead, and a guard that ends a call holding one with
INVALID_ARGUMENT naming the message that did not decode (field ``request``). The log
gets one WARNING line, without a traceback, per method at most every ``interval``
seconds, saying how many more it held back.

Installed after the authorisation interceptor, so a caller who may not call a method
learns that first, whatever it sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from common.errors import InvalidArgument
from common.grpc_errors import abort
from common.handlers import guarded
from common.logs import Throttle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Undecodable:
    """What a request decoded to when its bytes were not a ``message``."""

    message: str
    size: int


def message_name(deserializer: Callable[[bytes], Any] | None, method: str) -> str:
    """The full name of the message ``deserializer`` makes ("sagawire.v1.StepRequest"),
    or the method's when it does not say (a hand-written deserializer)."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses requests that do not decode: INVALID_ARGUMENT, one throttled WARNING."""

    def __init__(self, interval: float = 10.0) -> None:
        self._throttle = Throttle(log, interval)
        # Per method: the handler gRPC found and the guarded one made from it.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize: Callable[[bytes], Any] = handler.request_deserializer
        name = message_name(deserialize, method)

        def tolerant(raw: bytes) -> Any:
            try:
                return deserialize(raw)
            except Exception:  # DecodeError, or whatever a hand-written one raises
                return Undecodable(name, len(raw))

        async def refuse(context: grpc.aio.ServicerContext, request: Undecodable) -> None:
            self._throttle.warning(
                method,
                "undecodable request refused method=%s message=%s bytes=%d peer=%s",
                method,
                request.message,
                request.size,
                context.peer(),
            )
            await abort(
                context, InvalidArgument("request", f"body is not a valid {request.message}")
            )

        @asynccontextmanager
        async def guard(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refuse(context, request)
            if handler.request_streaming:
                yield _checked(request, context, refuse)
            else:
                yield request

        return guarded(handler, guard, request_deserializer=tolerant)


async def _checked(
    requests: Any,
    context: grpc.aio.ServicerContext,
    refuse: Callable[[grpc.aio.ServicerContext, Undecodable], Awaitable[None]],
) -> AsyncIterator[Any]:
    """A request stream that ends the call at its first undecodable message."""
    async for request in requests:
        if isinstance(request, Undecodable):
            await refuse(context, request)
        yield request
