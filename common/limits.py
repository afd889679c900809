"""Limits that keep the saga path open: streams apart from calls, connections bounded.

**Streams.** gRPC's ``maximum_concurrent_rpcs`` counts a call from its arrival to its
end, streams included, so idle ``Subscribe`` or ``WatchSaga`` streams could take every
slot and leave ``Execute``, ``PlaceOrder`` and health checks RESOURCE_EXHAUSTED.
:class:`StreamLimiter` admits at most ``max_streams`` streams (any method with a
streamed request or reply) at once, and at most ``max_streams_per_peer`` per caller:
the identity of its certificate, or its IP address when it has none (plaintext, or the
coordinator's token-only port). A stream beyond either cap ends at once with
RESOURCE_EXHAUSTED, which subscribers retry with backoff. gRPC's own cap is then set to
``max_concurrent_rpcs + max_streams`` (:func:`concurrent_rpcs`), so the unary calls
always have their ``max_concurrent_rpcs`` slots, whatever the streams do.

**Connections** (:func:`connection_options`): at most ``max_connections`` at once (gRPC
closes the ones beyond as they arrive), a TLS handshake must finish within seconds, a
connection without calls is closed after ``connection_idle_seconds``, every connection
is asked to go (GOAWAY) after ``connection_age_seconds`` and closed
``connection_age_grace_seconds`` later with whatever streams it still carries: an
event stream's subscriber reconnects from the offset it keeps, a unary call in flight
finishes within the grace. A client that pings more often than every 10 s without sending
data is sent away once it has done so more than twice (``grpc.http2.max_ping_strikes``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from common.authz import peer_identity
from common.config import ServerSettings
from common.errors import Transient, TransientKind
from common.grpc_errors import abort
from common.handlers import Guard, guarded
from common.logs import Throttle

log = logging.getLogger(__name__)

# A client may not ping more often than this without sending data (keepalive abuse).
MIN_PING_INTERVAL_MS = 10_000
HANDSHAKE_TIMEOUT_MS = 10_000


def concurrent_rpcs(settings: ServerSettings) -> int:
    """gRPC's ``maximum_concurrent_rpcs``: the unary calls' slots plus the streams' cap."""
    return settings.max_concurrent_rpcs + settings.max_streams


def connection_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Server-only channel options: the connection cap, handshake, idle and age limits."""
    return [
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", _ms(settings.connection_idle_seconds)),
        ("grpc.max_connection_age_ms", _ms(settings.connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.connection_age_grace_seconds)),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def peer_key(context: grpc.aio.ServicerContext) -> str:
    """Whom a stream counts against: the caller's identity, else its IP address."""
    identity = peer_identity(context)
    if identity is not None:
        return identity
    peer: str = context.peer() or "unknown"
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer  # "ipv4:127.0.0.1:5555" -> the host


class StreamLimiter(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Caps open streams in all and per caller; unary calls pass untouched."""

    def __init__(self, max_streams: int, max_per_peer: int) -> None:
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self.open: Counter[str] = Counter()
        self._throttle = Throttle(log, interval=10.0)

    @property
    def total(self) -> int:
        return self.open.total()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.response_streaming or handler.request_streaming):
            return handler
        return guarded(handler, self._admitted(handler_call_details.method))

    def _admitted(self, method: str) -> Guard:
        @asynccontextmanager
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            key = peer_key(context)
            if self.total >= self.max_streams or self.open[key] >= self.max_per_peer:
                await self._refuse(context, method, key)
            self.open[key] += 1
            try:
                yield request
            finally:
                self.open[key] -= 1
                if not self.open[key]:
                    del self.open[key]

        return admitted

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, key: str) -> None:
        whole = self.total >= self.max_streams
        self._throttle.warning(
            "all" if whole else "per-caller",
            "stream refused method=%s caller=%s open=%d of_caller=%d max=%d max_per_caller=%d",
            method,
            key,
            self.total,
            self.open[key],
            self.max_streams,
            self.max_per_peer,
        )
        limit = (
            f"{self.max_streams} streams" if whole else f"{self.max_per_peer} streams per caller"
        )
        await abort(
            context,
            Transient(
                f"too many open streams ({limit}); retry later",
                TransientKind.OVERLOADED,
            ),
        )
