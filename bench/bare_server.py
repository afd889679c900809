"""A participant that does nothing: the servers of the bench's ``bare`` mode.

``bare`` measures the physical floor of ``place_order``'s call graph on this machine: the
bench's raw driver makes the same five unary calls (create -> reserve || charge ->
schedule -> approve) with the same requests, to one of these per service instead of
the real one. Each answers with a result of the same shape and size as the real
action's (a uuid where the service makes one), so the requests that follow grow as they
do against the real services. What it keeps from a real service's server is what any
gRPC service on this stack must pay: mutual TLS with the service's own certificate
(plaintext only with SAGAWIRE_TLS=off, as everywhere), the same channel options, the
health service the bench waits on, uvloop. What it leaves out is the work: no store,
barrier, outbox, authorisation table, tracing, metrics or validation.

Run as ``python -m bench.bare_server NAME`` with the environment of the stack's service
``NAME`` (``SAGAWIRE_PORT``, the certificates); it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.config import SERVICE_NAMES, ServerSettings
from common.server import server_options
from common.tls import server_credentials
from contract.messages import pack
from protos.sagawire.v1 import common_pb2, order_saga_pb2, participant_pb2, participant_pb2_grpc

Data = order_saga_pb2.OrderSagaData

_APPLIED = participant_pb2.BARRIER_OUTCOME_APPLIED


def result_of(action: str) -> Data:
    """What the real action returns, in shape and size (see services/*/participant.py)."""
    if action == "create_order":
        return Data(total=common_pb2.Money(amount_minor=2400, currency="EUR"))
    if action == "charge":
        return Data(charge_id=str(uuid.uuid4()))
    if action == "schedule":
        return Data(shipment_id=str(uuid.uuid4()), tracking_number="SW" + uuid.uuid4().hex[:12])
    return Data()  # reserve, approve_order


class BareParticipant(participant_pb2_grpc.ParticipantServicer):
    """``Execute`` answers the action's result; the others answer done."""

    async def Execute(
        self, request: participant_pb2.StepRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.StepReply:
        return participant_pb2.StepReply(result=pack(result_of(request.action)), outcome=_APPLIED)

    async def Compensate(
        self, request: participant_pb2.StepRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.StepReply:
        return participant_pb2.StepReply(outcome=_APPLIED)

    async def SagasFinished(
        self, request: participant_pb2.SagasFinishedRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.SagasFinishedReply:
        return participant_pb2.SagasFinishedReply()


async def serve(name: str, settings: ServerSettings) -> None:
    """Serve ``name``'s bare participant until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=server_options(settings))
    participant_pb2_grpc.add_ParticipantServicer_to_server(BareParticipant(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    if settings.tls:
        server.add_secure_port(address, server_credentials(settings, name))
    else:
        server.add_insecure_port(address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in SERVICE_NAMES:
        raise SystemExit(f"usage: python -m bench.bare_server {{{','.join(SERVICE_NAMES)}}}")
    settings = ServerSettings()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(argv[0], settings))
        return
    uvloop.run(serve(argv[0], settings))


if __name__ == "__main__":
    main(sys.argv[1:])
