"""The events of the services' saga actions: what each one publishes, as the definitions say.

Which event type an action publishes when it succeeds, is rejected or is compensated
is declared once, in the participants' catalogue of the saga definitions
(contract/sagas.yaml); :class:`SagaEvents` reads it there. Every event carries an
:class:`~protos.sagawire.v1.events_pb2.OrderSagaEvent`: the saga's data as the step
left it, the saga's mode and definition, the step, and for a rejection its reason.

The constants below are place_order's event types as the shipped file declares them,
for clients that look for them (the bench, tests); the flow never reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from common.errors import BusinessRejection
from common.participant import Emitted, StepContext
from contract.definitions import DEFAULT_SAGA, ActionEvents, Definitions, EventKind
from contract.messages import overlay
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


def merged(payload: Message, result: Message | None) -> Data:
    """The saga's data after a step: its payload with the fields the step's result sets
    laid over it (as the coordinator merges results: contract/messages.py)."""
    data = Data()
    overlay(data, payload)
    if result is not None:
        overlay(data, result)
    return data


class SagaEvents:
    """A service's :class:`~common.participant.Announcer`: each outcome of its actions as
    the event the definitions' catalogue declares for it."""

    def __init__(self, service: str, definitions: Definitions) -> None:
        self._events: Mapping[str, ActionEvents] = definitions.events.get(service, {})

    def _event(
        self, action: str, kind: EventKind, ctx: StepContext, event: events_pb2.OrderSagaEvent
    ) -> Emitted | None:
        declared = self._events.get(action)
        event_type = declared.of(kind) if declared is not None else None
        if event_type is None:
            return None
        event.mode = participant_pb2.SagaMode.ValueType(ctx.mode)
        event.step = ctx.step
        event.saga = ctx.saga or DEFAULT_SAGA
        return event_type, event

    def executed(
        self, action: str, ctx: StepContext, payload: Message, result: Message
    ) -> Emitted | None:
        event = events_pb2.OrderSagaEvent(data=merged(payload, result))
        return self._event(action, EventKind.SUCCEEDED, ctx, event)

    def rejected(
        self, action: str, ctx: StepContext, payload: Message, rejection: BusinessRejection
    ) -> Emitted | None:
        event = events_pb2.OrderSagaEvent(
            data=merged(payload, None), reason=rejection.reason, message=rejection.message
        )
        return self._event(action, EventKind.REJECTED, ctx, event)

    def compensated(self, action: str, ctx: StepContext, payload: Message) -> Emitted | None:
        event = events_pb2.OrderSagaEvent(data=merged(payload, None))
        return self._event(action, EventKind.COMPENSATED, ctx, event)
