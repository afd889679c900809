"""serve(): the one way every Sagawire process runs a gRPC server.

Mutual TLS with the app's own certificate and the per-method authorisation table
(common/tls.py, common/authz.py; plaintext only with SAGAWIRE_TLS=off, said loudly),
health (SERVING only once the app's store is open, NOT_SERVING on shutdown),
reflection (SAGAWIRE_REFLECTION), message-size and concurrency limits, keepalive for
long-lived streams, caps on streams and connections (common/limits.py), INVALID_ARGUMENT
for a request that does not decode (common/decoding.py), the status of what a servicer
raised (common/grpc_errors.py), and an ordered, idempotent shutdown on SIGTERM/SIGINT:
stop accepting -> finish in-flight calls within the grace period -> close the app.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.authz import AuthorizationInterceptor
from common.config import BadSetting, ServerSettings
from common.decoding import DecodeGuard
from common.grpc_errors import ErrorStatus
from common.limits import StreamLimiter, concurrent_rpcs, connection_options
from common.telemetry import Telemetry, scoped
from common.tls import TlsError, server_credentials, warn_plaintext

log = logging.getLogger(__name__)


class App(Protocol):
    """What a process plugs into :func:`start_server`."""

    @property
    def identity(self) -> str:
        """Whose certificate the server presents: "coordinator", "payment", ..."""

    @property
    def service_names(self) -> Sequence[str]:
        """Full names of the gRPC services it registers, e.g. "sagawire.v1.Inventory"."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the app's servicers to the server."""

    async def start(self) -> None:
        """Open stores and start background work; called before SERVING."""

    async def drain(self) -> None:
        """End long-lived streams; called once accepting has stopped, before the grace wait."""

    async def stop(self) -> None:
        """Stop background work and close stores; called after the server stopped."""


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Channel options for servers and for the clients of their event streams: size limits
    and keepalive suited to long streams (servers add :func:`connection_options`)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class RunningServer:
    """A started server; :meth:`stop` is idempotent and ordered."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        app: App,
        port: int,
        grace: float,
        telemetry: Telemetry | None = None,
        streams: StreamLimiter | None = None,
    ) -> None:
        self.server = server
        # The open streams, by caller (tests and figures read it).
        self.streams = streams
        self.health = health_servicer
        self.app = app
        self.port = port
        self._grace = grace
        self._telemetry = telemetry
        self._stopping: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """NOT_SERVING, stop accepting, finish in-flight calls, then close the app."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        log.info("shutting down grace_seconds=%s", self._grace)
        await self.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self.server.stop(self._grace))
        await self.app.drain()
        await stopping
        await self.app.stop()
        log.info("stopped")
        if self._telemetry is not None:
            # Last, so the spans of the calls that finished above are exported too.
            await asyncio.to_thread(self._telemetry.shutdown)


async def start_server(
    app: App,
    settings: ServerSettings,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    telemetry: Telemetry | None = None,
) -> RunningServer:
    """Open the app, bind the port, and report SERVING for every service.

    With ``telemetry`` (the process's own) every call but health checks gets a
    server span, and the telemetry is flushed and shut down after the server stops.
    """
    streams = StreamLimiter(settings.max_streams, settings.max_streams_per_peer)
    server = _new_server(settings, streams, interceptors, telemetry)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    app.register(server)
    if settings.reflection:
        names = [*app.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
    port = _bind(server, app.identity, settings)
    for name in ("", *app.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    with scoped(telemetry):  # the app's background work records to its own telemetry
        await app.start()
    await server.start()
    for name in ("", *app.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving address=%s:%d identity=%s tls=%s",
        settings.host,
        port,
        app.identity,
        "mutual"
        if settings.tls and settings.tls_client_auth == "require"
        else "server-only"
        if settings.tls
        else "off",
    )
    return RunningServer(
        server, health_servicer, app, port, settings.grace_seconds, telemetry, streams
    )


async def start_side_server(
    identity: str,
    service_names: Sequence[str],
    register: Callable[[grpc.aio.Server], None],
    settings: ServerSettings,
    host: str,
    port: int,
    setting: str,
    telemetry: Telemetry | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A second server of the process on a port of its own (the Admin API): the same
    TLS, authorisation, limits and error edge as the main one; no health service.
    ``setting`` names what chooses the port, for the error if it is taken. Returns the
    started server and the port it bound."""
    streams = StreamLimiter(settings.max_streams, settings.max_streams_per_peer)
    server = _new_server(settings, streams, (), telemetry)
    register(server)
    if settings.reflection:
        reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME], server)
    where = settings.model_copy(update={"host": host, "port": port})
    bound = _bind(server, identity, where, setting)
    await server.start()
    return server, bound


def _new_server(
    settings: ServerSettings,
    streams: StreamLimiter,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    telemetry: Telemetry | None,
) -> grpc.aio.Server:
    traced = [telemetry.server_interceptor()] if telemetry is not None else []
    # After tracing, so a refused call is traced too; then the stream caps, so a caller
    # that may not call holds no stream slot; then the decode check, so it learns that it
    # may not call whatever it sent; before the app's own interceptors. Innermost, the
    # error edge: what a servicer raised becomes its status (common/grpc_errors.py).
    authorised = AuthorizationInterceptor(enforce=settings.tls)
    return grpc.aio.server(
        interceptors=[*traced, authorised, streams, DecodeGuard(), *interceptors, ErrorStatus()],
        options=[*server_options(settings), *connection_options(settings)],
        maximum_concurrent_rpcs=concurrent_rpcs(settings),
    )


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already.

    gRPC binds with SO_REUSEPORT, so a second server on a taken port would start
    "successfully" and share it with the first (each getting some of the connections);
    a plain bind finds the conflict. Port 0 is never taken.
    """
    if port == 0:
        return False
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # gRPC's own bind reports an address it cannot use
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError:
            return True
    return False


def _bind(
    server: grpc.aio.Server,
    identity: str,
    settings: ServerSettings,
    setting: str = "--port, SAGAWIRE_PORT",
) -> int:
    """Add the listening port: TLS with ``identity``'s certificate, or plaintext by name."""
    address = f"{settings.host}:{settings.port}"
    if port_taken(settings.host, settings.port):
        raise SystemExit(
            f"{identity}: port {settings.port} on {settings.host} is taken (another stack?);"
            f" stop it or choose another port ({setting})"
        )
    if settings.tls:
        try:
            credentials = server_credentials(settings, identity)
        except TlsError as error:
            raise SystemExit(str(error)) from None
        port: int = server.add_secure_port(address, credentials)
    else:
        warn_plaintext()
        port = server.add_insecure_port(address)
    if port == 0:
        raise BadSetting("SAGAWIRE_HOST", f"cannot listen on {address}")
    return port


async def serve_until_signal(*servers: RunningServer) -> None:
    """Block until SIGTERM or SIGINT, then shut the servers down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for running in servers:
            await running.stop()
