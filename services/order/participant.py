"""Order's saga actions: create the order (cancel it to compensate), approve it at the end;
accept a return of an approved order (withdraw it to compensate), close it at the end.

Cancel and approve act on the order this saga created, as recorded, never on the
order id a request names: a request naming another saga's order is refused. Likewise
withdraw and close act on the return this saga accepted.
"""

from __future__ import annotations

from common.errors import BusinessRejection, NotFound, RequestMismatch
from common.participant import Action, StepContext, refuse_second_step, require_id
from common.store import Connection, Row
from protos.sagawire.v1 import common_pb2, order_saga_pb2
from services.order import domain, store
from services.validation import (
    PLACED_ORDER,
    PRICED_ORDER,
    RETURN_REQUEST,
    RETURNED_ORDER,
    validate_destination,
    validate_items,
    validate_order,
)

Data = order_saga_pb2.OrderSagaData


def _validate_create(data: Data) -> None:
    validate_order(data)
    require_id(data.customer_id, "payload.customer_id")
    validate_items(data)
    validate_destination(data)


def _create(conn: Connection, ctx: StepContext, data: Data) -> Data:
    # The barrier answers a repeat of this saga's step; a row here is another step's or
    # belongs to another saga.
    if store.order_of_saga(conn, ctx.saga_id) is not None:
        refuse_second_step(ctx, "an order")
    if store.order(conn, data.order_id) is not None:
        raise BusinessRejection(
            "ORDER_EXISTS", f"order {data.order_id} belongs to another saga", order_id=data.order_id
        )
    prices, currency = store.prices(conn)
    total = domain.price(prices, [(i.sku, i.quantity) for i in data.items])
    store.add_order(conn, ctx.saga_id, data, total, currency)
    return Data(total=common_pb2.Money(amount_minor=total, currency=currency))


def _saga_order(conn: Connection, ctx: StepContext, data: Data) -> Row:
    """The order this saga created; the request must name that one."""
    row = store.order_of_saga(conn, ctx.saga_id)
    if row is None:
        raise NotFound(f"saga {ctx.saga_id} created no order")
    if row["order_id"] != data.order_id:
        raise RequestMismatch(
            f"order {data.order_id} is not the order saga {ctx.saga_id} created; refused"
        )
    return row


def _cancel(conn: Connection, ctx: StepContext, data: Data, created: Data) -> None:
    row = _saga_order(conn, ctx, data)
    current = domain.Status(row["status"])
    cancelled = domain.cancel(current)
    if cancelled is not current:
        store.set_status(conn, row["order_id"], cancelled.value, data.cancel_reason or "cancelled")


def _approve(conn: Connection, ctx: StepContext, data: Data) -> Data:
    row = _saga_order(conn, ctx, data)
    current = domain.Status(row["status"])
    approved = domain.approve(current)
    if approved is not current:
        store.set_status(conn, row["order_id"], approved.value)
    return Data()


CREATE = Action(
    name="create_order",
    compensation="cancel_order",
    payload_type=Data,
    validate=_validate_create,
    execute=_create,
    compensate=_cancel,
    binds=PLACED_ORDER,
)

APPROVE = Action(
    name="approve_order",
    payload_type=Data,
    validate=validate_order,
    execute=_approve,
    binds=PRICED_ORDER,
)


def _validate_return(data: Data) -> None:
    validate_order(data)
    require_id(data.customer_id, "payload.customer_id")


def _accept_return(conn: Connection, ctx: StepContext, data: Data) -> Data:
    if store.return_of_saga(conn, ctx.saga_id) is not None:
        refuse_second_step(ctx, "a return")
    row = store.order(conn, data.order_id)
    if row is None or row["customer_id"] != data.customer_id:
        # The same answer whether the order does not exist or is someone else's.
        raise BusinessRejection(
            "ORDER_NOT_FOUND",
            f"no order {data.order_id} of customer {data.customer_id}",
            order_id=data.order_id,
        )
    domain.check_returnable(domain.Status(row["status"]))
    if store.open_return(conn, data.order_id) is not None:
        raise BusinessRejection(
            "ALREADY_RETURNED", f"order {data.order_id} is already being returned"
        )
    store.add_return(conn, ctx.saga_id, data.order_id)
    placed = Data.FromString(row["items"])
    return Data(
        items=placed.items,
        total=common_pb2.Money(amount_minor=row["total_minor"], currency=row["currency"]),
        placed_by_saga_id=row["saga_id"],
    )


def _saga_return(conn: Connection, ctx: StepContext, data: Data) -> Row:
    """The return this saga accepted; the request must name its order."""
    row = store.return_of_saga(conn, ctx.saga_id)
    if row is None:
        raise NotFound(f"saga {ctx.saga_id} accepted no return")
    if row["order_id"] != data.order_id:
        raise RequestMismatch(
            f"order {data.order_id} is not the order saga {ctx.saga_id} takes back; refused"
        )
    return row


def _withdraw_return(conn: Connection, ctx: StepContext, data: Data, accepted: Data) -> None:
    row = _saga_return(conn, ctx, data)
    if row["status"] == "accepted":
        store.set_return_status(conn, ctx.saga_id, "withdrawn", data.cancel_reason or "withdrawn")


def _close_return(conn: Connection, ctx: StepContext, data: Data) -> Data:
    returned = _saga_return(conn, ctx, data)
    order = store.order(conn, returned["order_id"])
    assert order is not None  # a return is only accepted for an existing order
    current = domain.Status(order["status"])
    closed = domain.mark_returned(current)
    if closed is not current:
        store.set_status(conn, order["order_id"], closed.value)
    store.set_return_status(conn, ctx.saga_id, "closed")
    return Data()


ACCEPT_RETURN = Action(
    name="accept_return",
    compensation="withdraw_return",
    payload_type=Data,
    validate=_validate_return,
    execute=_accept_return,
    compensate=_withdraw_return,
    binds=RETURN_REQUEST,
)

CLOSE_RETURN = Action(
    name="close_return",
    payload_type=Data,
    validate=_validate_return,
    execute=_close_return,
    binds=RETURNED_ORDER,
)

ACTIONS = (CREATE, APPROVE, ACCEPT_RETURN, CLOSE_RETURN)
