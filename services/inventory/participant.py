"""Inventory's saga actions: reserve stock for an order, release it again; put a returned
order's units back in stock."""

from __future__ import annotations

from common.participant import Action, StepContext, refuse_second_step
from common.store import Connection
from protos.sagawire.v1 import order_saga_pb2
from services.inventory import domain, store
from services.validation import (
    PRICED_ORDER,
    RETURNED_ORDER,
    validate_items,
    validate_order,
    validate_placed_by,
)

Data = order_saga_pb2.OrderSagaData


def _validate(data: Data) -> None:
    validate_order(data)
    validate_items(data)


def _lines(data: Data) -> list[domain.Line]:
    return domain.merge_lines([domain.Line(i.sku, i.quantity) for i in data.items])


def _reserve(conn: Connection, ctx: StepContext, data: Data) -> Data:
    if store.reservation_lines(conn, ctx.saga_id):
        refuse_second_step(ctx, "a reservation")
    lines = _lines(data)
    current = store.levels(conn, (line.sku for line in lines))
    store.save_levels(conn, domain.reserve(current, lines))
    store.add_reservation(conn, ctx.saga_id, lines)
    return Data()


def _release(conn: Connection, ctx: StepContext, data: Data, reserved: Data) -> None:
    # Release exactly what this saga reserved, as recorded, not what the request says.
    lines = [
        line for line, status in store.reservation_lines(conn, ctx.saga_id) if status == "reserved"
    ]
    if not lines:
        return
    current = store.levels(conn, (line.sku for line in lines))
    store.save_levels(conn, domain.release(current, lines))
    store.mark_released(conn, ctx.saga_id)


RESERVE = Action(
    name="reserve",
    compensation="release",
    payload_type=Data,
    validate=_validate,
    execute=_reserve,
    compensate=_release,
    binds=PRICED_ORDER,
)


def _validate_restock(data: Data) -> None:
    _validate(data)
    validate_placed_by(data)


def _restock(conn: Connection, ctx: StepContext, data: Data) -> Data:
    # The units the order's own saga reserved (and kept, the order being completed), as
    # recorded, go back to available stock; nothing to do if they already did.
    placed_by = data.placed_by_saga_id
    lines = [
        line for line, status in store.reservation_lines(conn, placed_by) if status == "reserved"
    ]
    if lines:
        current = store.levels(conn, (line.sku for line in lines))
        store.save_levels(conn, domain.release(current, lines))
        store.mark_released(conn, placed_by)
    return Data()


RESTOCK = Action(
    name="restock",
    payload_type=Data,
    validate=_validate_restock,
    execute=_restock,
    binds=RETURNED_ORDER,
)

ACTIONS = (RESERVE, RESTOCK)
