"""``sagawire health ADDRESS``: ask a process's gRPC health service whether it is SERVING.

It exits 0 only when the answer is SERVING, and 1 for anything else (NOT_SERVING,
an unknown service, no answer within the timeout), so a container health check
can run it as is::

    healthcheck:
      test: ["CMD", "sagawire", "health", "127.0.0.1:50052"]

It connects with mutual TLS like every client, presenting ``SAGAWIRE_TLS_IDENTITY``'s
certificate (operator by default; health answers any identity from the stack's CA).
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.tls import Identity, TlsError


def check(
    address: str, service: str = "", timeout: float = 3.0, identity: Identity | None = None
) -> str:
    """The health status name of ``service`` ("" = the whole server) at ``address``.

    Returns e.g. "SERVING" or "NOT_SERVING"; a failed call is reported by its gRPC
    code, e.g. "NOT_FOUND" (unknown service) or "UNAVAILABLE" (nobody listening).
    """
    with (identity or Identity.from_env()).sync_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return str(code.name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def health(
    address: Annotated[str, typer.Argument(help="host:port of a Sagawire process.")],
    service: Annotated[
        str, typer.Option(help="A gRPC service name, e.g. sagawire.v1.Inventory (default: all).")
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
) -> None:
    """Check a process's gRPC health; exit 0 only when it is SERVING (container health checks)."""
    try:
        status = check(address, service, timeout)
    except TlsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{address} {service or '(server)'}: {status}")
    if status != "SERVING":
        raise typer.Exit(1)
