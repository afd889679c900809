"""Helpers for event-stream tests: place choreographed orders and read streams over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import grpc

from common.certs import COORDINATOR
from common.grpc_errors import TRANSIENT_CODES
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    order_saga_pb2,
    participant_pb2,
    participant_pb2_grpc,
)
from tests.support import open_channel


def create_order_request(
    sku: str = "SKU-MUG", quantity: int = 1, customer: str = "alice", destination: str = "Berlin"
) -> participant_pb2.StepRequest:
    """A create_order step that starts a choreographed place_order saga."""
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()),
        customer_id=customer,
        destination=destination,
        items=[common_pb2.LineItem(sku=sku, quantity=quantity)],
    )
    return participant_pb2.StepRequest(
        saga_id=str(uuid.uuid4()),
        step="create_order",
        action="create_order",
        payload=pack(data),
        mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
    )


async def execute_until_acked(
    address: str, request: participant_pb2.StepRequest, timeout: float = 30.0
) -> None:
    """Send the step until the service acknowledges it, retrying transient failures.

    Retrying is safe because of the barrier: a duplicate has no second effect.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with open_channel(address, COORDINATOR) as opened:
                await participant_pb2_grpc.ParticipantStub(opened).Execute(request, timeout=5)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() not in TRANSIENT_CODES or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def read_events(
    address: str, expected: int, types: Sequence[str] = (), timeout: float = 30.0
) -> list[events_pb2.Event]:
    """Subscribe from the beginning and return the first ``expected`` events."""
    events: list[events_pb2.Event] = []
    async with open_channel(address) as opened:
        stream = events_pb2_grpc.EventStreamStub(opened).Subscribe(
            events_pb2.SubscribeRequest(from_sequence=1, consumer="test", types=list(types)),
            timeout=timeout,
        )
        async for batch in stream:
            events.extend(batch.events)
            if len(events) >= expected:
                stream.cancel()
                break
    return events[:expected]
