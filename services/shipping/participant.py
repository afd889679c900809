"""Shipping's saga actions: schedule a shipment, cancel it again."""

from __future__ import annotations

import uuid

from common.participant import Action, StepContext, refuse_second_step
from common.store import Connection
from protos.sagawire.v1 import order_saga_pb2
from services.shipping import domain, store
from services.validation import PRICED_ORDER, validate_destination, validate_order

Data = order_saga_pb2.OrderSagaData


def _validate(data: Data) -> None:
    validate_order(data)
    validate_destination(data)


def _schedule(conn: Connection, ctx: StepContext, data: Data) -> Data:
    if store.shipment(conn, "saga_id", ctx.saga_id) is not None:
        refuse_second_step(ctx, "a shipment")
    domain.check_destination(data.destination, store.unserviceable(conn))
    shipment_id = str(uuid.uuid4())
    tracking = domain.new_tracking_number()
    store.add_shipment(conn, shipment_id, ctx.saga_id, data.order_id, data.destination, tracking)
    return Data(shipment_id=shipment_id, tracking_number=tracking)


def _cancel(conn: Connection, ctx: StepContext, data: Data, scheduled: Data) -> None:
    store.cancel(conn, ctx.saga_id)


SCHEDULE = Action(
    name="schedule",
    compensation="cancel",
    payload_type=Data,
    validate=_validate,
    execute=_schedule,
    compensate=_cancel,
    binds=PRICED_ORDER,
)

ACTIONS = (SCHEDULE,)
