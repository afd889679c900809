"""Helpers for driving participants over real gRPC and reading their truth back.

A :class:`Probe` knows, for one service, a step that succeeds, and how to read
through the service's query RPCs what that step changed: the shared resource
it touches (stock, a balance, a row count) and the rows it wrote for one saga.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any, ClassVar

import grpc

from common.grpc_errors import RemoteError, parse_rpc_error
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    inventory_pb2,
    order_pb2,
    order_saga_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)
from tests.support import Cluster, listing

Data = order_saga_pb2.OrderSagaData
ORCHESTRATION = participant_pb2.SAGA_MODE_ORCHESTRATION


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def order_data(**fields: Any) -> Data:
    """A valid place_order payload (alice, to Berlin, 3 mugs for 24.00 EUR) with overrides."""
    defaults: dict[str, Any] = {
        "order_id": new_id("order"),
        "customer_id": "alice",
        "destination": "Berlin",
        "items": [common_pb2.LineItem(sku="SKU-MUG", quantity=3)],
        "total": common_pb2.Money(amount_minor=2_400, currency="EUR"),
    }
    return Data(**{**defaults, **fields})


def step_request(
    action: str, data: Data, saga_id: str | None = None, step: str | None = None
) -> participant_pb2.StepRequest:
    return participant_pb2.StepRequest(
        saga_id=saga_id or new_id("saga"),
        step=step or f"{action}_step",
        action=action,
        payload=pack(data),
        mode=ORCHESTRATION,
    )


def with_action(request: participant_pb2.StepRequest, action: str) -> participant_pb2.StepRequest:
    """The same (saga, step, payload) naming another action, e.g. its compensation."""
    other = participant_pb2.StepRequest()
    other.CopyFrom(request)
    other.action = action
    return other


async def execute(
    cluster: Cluster, service: str, request: participant_pb2.StepRequest
) -> participant_pb2.StepReply:
    reply: participant_pb2.StepReply = await cluster.participant(service).Execute(request)
    return reply


async def compensate(
    cluster: Cluster, service: str, request: participant_pb2.StepRequest
) -> participant_pb2.StepReply:
    reply: participant_pb2.StepReply = await cluster.participant(service).Compensate(request)
    return reply


def result_of(reply: participant_pb2.StepReply) -> Data:
    data = Data()
    assert reply.result.Unpack(data), reply.result.type_url
    return data


async def failure(call: Awaitable[object]) -> RemoteError:
    """Await a call that must fail; return its code, reason, message and field."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return parse_rpc_error(error)
    raise AssertionError("the call succeeded but was expected to fail")


class Probe(ABC):
    """One service's successful step and how to observe its effect."""

    service: ClassVar[str]
    action: ClassVar[str]
    compensation: ClassVar[str]
    # What rows() shows for the saga once the step was applied / compensated.
    applied_status: ClassVar[str]
    compensated_status: ClassVar[str]

    @abstractmethod
    def payload(self) -> Data:
        """A payload with which the step succeeds."""

    @abstractmethod
    async def resource(self, cluster: Cluster) -> tuple[int, ...]:
        """The shared state the step changes (stock, balance, row count)."""

    @abstractmethod
    def after_execute(self, before: tuple[int, ...]) -> tuple[int, ...]:
        """The resource after one execute, given it before."""

    @abstractmethod
    def after_compensate(self, before: tuple[int, ...]) -> tuple[int, ...]:
        """The resource after one execute and its compensation, given it before."""

    @abstractmethod
    async def rows(self, cluster: Cluster, saga_id: str) -> list[str]:
        """The status of every row the step wrote for this saga."""


class InventoryProbe(Probe):
    service = "inventory"
    action = "reserve"
    compensation = "release"
    applied_status = "SKU-BOOK x2 RESERVED"
    compensated_status = "SKU-BOOK x2 RELEASED"

    def payload(self) -> Data:
        # Two lines of one SKU: the service merges them into one reservation line.
        items = [common_pb2.LineItem(sku="SKU-BOOK", quantity=1)] * 2
        return order_data(items=items)

    async def resource(self, cluster: Cluster) -> tuple[int, ...]:
        stock = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-BOOK"))
        return (stock.available, stock.reserved)

    def after_execute(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] - 2, before[1] + 2)

    def after_compensate(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return before

    async def rows(self, cluster: Cluster, saga_id: str) -> list[str]:
        request = inventory_pb2.GetReservationRequest(saga_id=saga_id)
        try:
            reservation = await cluster.inventory.GetReservation(request)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return []
        status = inventory_pb2.ReservationStatus.Name(reservation.status).rsplit("_", 1)[1]
        return [f"{line.sku} x{line.quantity} {status}" for line in reservation.lines]


class PaymentProbe(Probe):
    service = "payment"
    action = "charge"
    compensation = "refund"
    applied_status = "1234 CAPTURED"
    compensated_status = "1234 REFUNDED"

    def payload(self) -> Data:
        return order_data(total=common_pb2.Money(amount_minor=1_234, currency="EUR"))

    async def resource(self, cluster: Cluster) -> tuple[int, ...]:
        account = await cluster.payment.GetAccount(
            payment_pb2.GetAccountRequest(customer_id="alice")
        )
        charges = await listing(
            cluster.payment.ListCharges,
            payment_pb2.ListChargesRequest(customer_id="alice"),
            "charges",
        )
        return (account.balance.amount_minor, len(charges))

    def after_execute(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] - 1_234, before[1] + 1)

    def after_compensate(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0], before[1] + 1)  # the charge stays on record, as refunded

    async def rows(self, cluster: Cluster, saga_id: str) -> list[str]:
        found = await listing(
            cluster.payment.ListCharges, payment_pb2.ListChargesRequest(saga_id=saga_id), "charges"
        )
        return [
            f"{c.amount.amount_minor} {payment_pb2.ChargeStatus.Name(c.status).rsplit('_', 1)[1]}"
            for c in found
        ]


class ShippingProbe(Probe):
    service = "shipping"
    action = "schedule"
    compensation = "cancel"
    applied_status = "SCHEDULED"
    compensated_status = "CANCELLED"

    def payload(self) -> Data:
        return order_data(destination="Lisbon")

    async def resource(self, cluster: Cluster) -> tuple[int, ...]:
        found = await listing(
            cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments"
        )
        return (len(found),)

    def after_execute(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] + 1,)

    def after_compensate(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] + 1,)

    async def rows(self, cluster: Cluster, saga_id: str) -> list[str]:
        found = await listing(
            cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments"
        )
        return [
            shipping_pb2.ShipmentStatus.Name(s.status).rsplit("_", 1)[1]
            for s in found
            if s.saga_id == saga_id
        ]


class OrderProbe(Probe):
    service = "order"
    action = "create_order"
    compensation = "cancel_order"
    applied_status = "PENDING"
    compensated_status = "CANCELLED"

    def payload(self) -> Data:
        return order_data()

    async def resource(self, cluster: Cluster) -> tuple[int, ...]:
        found = await listing(cluster.order.ListOrders, order_pb2.ListOrdersRequest(), "orders")
        return (len(found),)

    def after_execute(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] + 1,)

    def after_compensate(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return (before[0] + 1,)

    async def rows(self, cluster: Cluster, saga_id: str) -> list[str]:
        found = await listing(cluster.order.ListOrders, order_pb2.ListOrdersRequest(), "orders")
        return [
            order_pb2.OrderStatus.Name(o.status).rsplit("_", 1)[1]
            for o in found
            if o.saga_id == saga_id
        ]


PROBES: dict[str, Probe] = {
    p.service: p for p in (OrderProbe(), InventoryProbe(), PaymentProbe(), ShippingProbe())
}


async def full_state(cluster: Cluster, service: str) -> bytes:
    """Everything a service's query API can show, serialized: to prove nothing was written."""
    message: Any
    if service == "inventory":
        message = inventory_pb2.ListStockResponse(
            stock=await listing(
                cluster.inventory.ListStock, inventory_pb2.ListStockRequest(), "stock"
            )
        )
    elif service == "payment":
        message = payment_pb2.ListAccountsResponse(
            accounts=await listing(
                cluster.payment.ListAccounts, payment_pb2.ListAccountsRequest(), "accounts"
            )
        )
        charges = payment_pb2.ListChargesResponse(
            charges=await listing(
                cluster.payment.ListCharges, payment_pb2.ListChargesRequest(), "charges"
            )
        )
        return bytes(
            message.SerializeToString(deterministic=True)
            + charges.SerializeToString(deterministic=True)
        )
    elif service == "shipping":
        message = shipping_pb2.ListShipmentsResponse(
            shipments=await listing(
                cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments"
            )
        )
    else:
        message = order_pb2.ListOrdersResponse(
            orders=await listing(cluster.order.ListOrders, order_pb2.ListOrdersRequest(), "orders")
        )
    return bytes(message.SerializeToString(deterministic=True))
