"""``sagawire health [ADDRESS]``: ask a process's gRPC health service whether it is SERVING.

It exits 0 only when the answer is SERVING: 1 for NOT_SERVING, 5 for a service the
process does not have, 6 when nobody answers within the timeout. Without an address it
asks the coordinator (``--address``). Containers use the smaller probe of
common/health_probe.py, which answers the same question for a fraction of the cost.

It connects with mutual TLS like every client, presenting ``SAGAWIRE_TLS_IDENTITY``'s
certificate (operator by default; health answers any identity from the stack's CA).
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.client import ExitCode, coordinator_address, identity
from cli.output import Output, OutputOption, print_json
from common.config import BadSetting, check_address
from common.tls import Identity

_CODES = {
    "SERVING": ExitCode.OK,
    "NOT_FOUND": ExitCode.NOT_FOUND,
    "UNAVAILABLE": ExitCode.UNREACHABLE,
    "DEADLINE_EXCEEDED": ExitCode.UNREACHABLE,
}


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
    address: Annotated[
        str | None,
        typer.Argument(help="host:port of a Sagawire process (default: the coordinator)."),
    ] = None,
    service: Annotated[
        str, typer.Option(help="A gRPC service name, e.g. sagawire.v1.Inventory (default: all).")
    ] = "",
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds to wait for the answer.")] = 3.0,
    output: OutputOption = Output.table,
) -> None:
    """Check a process's gRPC health; exit 0 only when it is SERVING."""
    target = address or coordinator_address()
    try:
        check_address(target)
    except ValueError as error:
        raise BadSetting("ADDRESS", str(error)) from None
    status = check(target, service, timeout, identity())
    if output is Output.json:
        print_json({"address": target, "service": service, "status": status})
    else:
        typer.echo(f"{target} {service or '(server)'}: {status}")
    raise typer.Exit(_CODES.get(status, ExitCode.FAILED))
