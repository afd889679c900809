"""The events of the place_order saga: names, and how a step's outcome becomes one."""

from __future__ import annotations

from common.errors import BusinessRejection
from common.participant import StepContext
from protos.sagawire.v1 import events_pb2, order_saga_pb2

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


def _merged(
    payload: order_saga_pb2.OrderSagaData, result: order_saga_pb2.OrderSagaData | None
) -> order_saga_pb2.OrderSagaData:
    data = order_saga_pb2.OrderSagaData()
    data.CopyFrom(payload)
    if result is not None:
        data.MergeFrom(result)
    return data


def succeeded(event_type: str):  # type: ignore[no-untyped-def]
    """An ``on_executed`` hook publishing ``event_type`` with the saga's updated data."""

    def build(
        ctx: StepContext,
        payload: order_saga_pb2.OrderSagaData,
        result: order_saga_pb2.OrderSagaData,
    ) -> tuple[str, events_pb2.OrderSagaEvent]:
        return event_type, events_pb2.OrderSagaEvent(
            data=_merged(payload, result),
            mode=ctx.mode,
            step=ctx.step,  # type: ignore[arg-type]
        )

    return build


def rejected(event_type: str):  # type: ignore[no-untyped-def]
    """An ``on_rejected`` hook publishing ``event_type`` with the rejection's reason."""

    def build(
        ctx: StepContext, payload: order_saga_pb2.OrderSagaData, rejection: BusinessRejection
    ) -> tuple[str, events_pb2.OrderSagaEvent]:
        return event_type, events_pb2.OrderSagaEvent(
            data=payload,
            mode=ctx.mode,
            step=ctx.step,  # type: ignore[arg-type]
            reason=rejection.reason,
            message=rejection.message,
        )

    return build


def compensated(event_type: str):  # type: ignore[no-untyped-def]
    """An ``on_compensated`` hook publishing ``event_type``."""

    def build(
        ctx: StepContext, payload: order_saga_pb2.OrderSagaData
    ) -> tuple[str, events_pb2.OrderSagaEvent]:
        return event_type, events_pb2.OrderSagaEvent(
            data=payload,
            mode=ctx.mode,
            step=ctx.step,  # type: ignore[arg-type]
        )

    return build
