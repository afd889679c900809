"""The events of the place_order saga: names, and how a step's outcome becomes one."""

from __future__ import annotations

from collections.abc import Callable

from common.errors import BusinessRejection
from common.participant import StepContext
from protos.sagawire.v1 import events_pb2, order_saga_pb2, participant_pb2

ORDER_CREATED = "sagawire.order.created"
ORDER_APPROVED = "sagawire.order.approved"
ORDER_CANCELLED = "sagawire.order.cancelled"
ORDER_REJECTED = "sagawire.order.rejected"
STOCK_RESERVED = "sagawire.inventory.reserved"
STOCK_REJECTED = "sagawire.inventory.rejected"
STOCK_RELEASED = "sagawire.inventory.released"
PAYMENT_CHARGED = "sagawire.payment.charged"
PAYMENT_DECLINED = "sagawire.payment.declined"
PAYMENT_REFUNDED = "sagawire.payment.refunded"
SHIPMENT_SCHEDULED = "sagawire.shipping.scheduled"
SHIPMENT_FAILED = "sagawire.shipping.failed"
SHIPMENT_CANCELLED = "sagawire.shipping.cancelled"

Data = order_saga_pb2.OrderSagaData
Emitted = tuple[str, events_pb2.OrderSagaEvent]
OnExecuted = Callable[[StepContext, Data, Data], Emitted]
OnRejected = Callable[[StepContext, Data, BusinessRejection], Emitted]
OnCompensated = Callable[[StepContext, Data], Emitted]


def _merged(
    payload: order_saga_pb2.OrderSagaData, result: order_saga_pb2.OrderSagaData | None
) -> order_saga_pb2.OrderSagaData:
    data = order_saga_pb2.OrderSagaData()
    data.CopyFrom(payload)
    if result is not None:
        data.MergeFrom(result)
    return data


def _mode(ctx: StepContext) -> participant_pb2.SagaMode.ValueType:
    return participant_pb2.SagaMode.ValueType(ctx.mode)


def succeeded(event_type: str) -> OnExecuted:
    """An ``on_executed`` hook publishing ``event_type`` with the saga's updated data."""

    def build(
        ctx: StepContext,
        payload: order_saga_pb2.OrderSagaData,
        result: order_saga_pb2.OrderSagaData,
    ) -> Emitted:
        return event_type, events_pb2.OrderSagaEvent(
            data=_merged(payload, result),
            mode=_mode(ctx),
            step=ctx.step,
        )

    return build


def rejected(event_type: str) -> OnRejected:
    """An ``on_rejected`` hook publishing ``event_type`` with the rejection's reason."""

    def build(
        ctx: StepContext, payload: order_saga_pb2.OrderSagaData, rejection: BusinessRejection
    ) -> Emitted:
        return event_type, events_pb2.OrderSagaEvent(
            data=payload,
            mode=_mode(ctx),
            step=ctx.step,
            reason=rejection.reason,
            message=rejection.message,
        )

    return build


def compensated(event_type: str) -> OnCompensated:
    """An ``on_compensated`` hook publishing ``event_type``."""

    def build(ctx: StepContext, payload: order_saga_pb2.OrderSagaData) -> Emitted:
        return event_type, events_pb2.OrderSagaEvent(
            data=payload,
            mode=_mode(ctx),
            step=ctx.step,
        )

    return build
