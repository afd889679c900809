"""Order's saga actions: create the order (cancel it to compensate), approve it at the end."""

from __future__ import annotations

import sqlite3

from common.errors import BusinessRejection, NotFound
from common.participant import Action, StepContext, require_id
from protos.sagawire.v1 import common_pb2, order_saga_pb2
from services import saga_events
from services.order import domain, store
from services.validation import validate_destination, validate_items, validate_order

Data = order_saga_pb2.OrderSagaData


def _validate_create(data: Data) -> None:
    validate_order(data)
    require_id(data.customer_id, "payload.customer_id")
    validate_items(data)
    validate_destination(data)


def _create(conn: sqlite3.Connection, ctx: StepContext, data: Data) -> Data:
    # The barrier answers a repeat of this saga's step; a row here belongs to another saga.
    if store.order(conn, data.order_id) is not None:
        raise BusinessRejection(
            "ORDER_EXISTS", f"order {data.order_id} belongs to another saga", order_id=data.order_id
        )
    prices, currency = store.prices(conn)
    total = domain.price(prices, [(i.sku, i.quantity) for i in data.items])
    store.add_order(conn, ctx.saga_id, data, total, currency)
    return Data(total=common_pb2.Money(amount_minor=total, currency=currency))


def _status(conn: sqlite3.Connection, order_id: str) -> domain.Status:
    row = store.order(conn, order_id)
    if row is None:
        raise NotFound(f"no order {order_id}")
    return domain.Status(row["status"])


def _cancel(conn: sqlite3.Connection, ctx: StepContext, data: Data, created: Data) -> None:
    current = _status(conn, data.order_id)
    cancelled = domain.cancel(current)
    if cancelled is not current:
        store.set_status(conn, data.order_id, cancelled.value, data.cancel_reason or "cancelled")


def _approve(conn: sqlite3.Connection, ctx: StepContext, data: Data) -> Data:
    current = _status(conn, data.order_id)
    approved = domain.approve(current)
    if approved is not current:
        store.set_status(conn, data.order_id, approved.value)
    return Data()


CREATE = Action(
    name="create_order",
    compensation="cancel_order",
    payload_type=Data,
    validate=_validate_create,
    execute=_create,
    compensate=_cancel,
    on_executed=saga_events.succeeded(saga_events.ORDER_CREATED),
    on_rejected=saga_events.rejected(saga_events.ORDER_REJECTED),
    on_compensated=saga_events.compensated(saga_events.ORDER_CANCELLED),
)

APPROVE = Action(
    name="approve_order",
    payload_type=Data,
    validate=validate_order,
    execute=_approve,
    on_executed=saga_events.succeeded(saga_events.ORDER_APPROVED),
)

ACTIONS = (CREATE, APPROVE)
