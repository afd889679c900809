"""What a choreography event says about its saga: the pure half of the observer.

Each place_order event reports one step's outcome; this table turns it into the
same step and saga statuses an orchestrated saga goes through, so ``GetSaga``
shows both kinds alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import events_pb2, participant_pb2
from services import saga_events as ev

# event type -> (step status, saga status after it; None keeps the current one)
_EFFECTS: dict[str, tuple[int, int | None]] = {
    ev.ORDER_CREATED: (pb.STEP_STATUS_SUCCEEDED, pb.SAGA_STATUS_RUNNING),
    ev.ORDER_REJECTED: (pb.STEP_STATUS_REJECTED, pb.SAGA_STATUS_COMPENSATED),
    ev.STOCK_RESERVED: (pb.STEP_STATUS_SUCCEEDED, None),
    ev.STOCK_REJECTED: (pb.STEP_STATUS_REJECTED, pb.SAGA_STATUS_COMPENSATING),
    ev.PAYMENT_CHARGED: (pb.STEP_STATUS_SUCCEEDED, None),
    ev.PAYMENT_DECLINED: (pb.STEP_STATUS_REJECTED, pb.SAGA_STATUS_COMPENSATING),
    ev.SHIPMENT_SCHEDULED: (pb.STEP_STATUS_SUCCEEDED, None),
    ev.SHIPMENT_FAILED: (pb.STEP_STATUS_REJECTED, pb.SAGA_STATUS_COMPENSATING),
    ev.PAYMENT_REFUNDED: (pb.STEP_STATUS_COMPENSATED, None),
    ev.STOCK_RELEASED: (pb.STEP_STATUS_COMPENSATED, None),
    ev.SHIPMENT_CANCELLED: (pb.STEP_STATUS_COMPENSATED, None),
    ev.ORDER_CANCELLED: (pb.STEP_STATUS_COMPENSATED, pb.SAGA_STATUS_COMPENSATED),
    ev.ORDER_APPROVED: (pb.STEP_STATUS_SUCCEEDED, pb.SAGA_STATUS_COMPLETED),
}

OBSERVED_TYPES = frozenset(_EFFECTS)
TERMINAL = frozenset({pb.SAGA_STATUS_COMPLETED, pb.SAGA_STATUS_COMPENSATED})


@dataclass(frozen=True)
class Observation:
    """One step's outcome, as reported by an event."""

    saga_id: str
    step: str
    step_status: int
    saga_status: int | None
    event_type: str
    data: events_pb2.OrderSagaEvent
    # For rejections: which step said no, and why.
    failure: pb.Failure | None


def observe(event: events_pb2.Event) -> Observation | None:
    """The observation an event makes, or None (not a choreographed place_order event)."""
    effect = _EFFECTS.get(event.type)
    payload = events_pb2.OrderSagaEvent()
    if effect is None or not event.data.Unpack(payload):
        return None
    if payload.mode != participant_pb2.SAGA_MODE_CHOREOGRAPHY:
        return None
    step_status, saga_status = effect
    failure = None
    if step_status == pb.STEP_STATUS_REJECTED:
        failure = pb.Failure(
            step=payload.step,
            code="FAILED_PRECONDITION",
            reason=payload.reason,
            message=payload.message,
        )
    return Observation(
        saga_id=event.subject,
        step=payload.step,
        step_status=step_status,
        saga_status=saga_status,
        event_type=event.type,
        data=payload,
        failure=failure,
    )
