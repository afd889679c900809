"""Payment's saga actions: charge the order's total, refund it again; refund a returned
order's charge (revoke that refund to compensate)."""

from __future__ import annotations

import uuid

from common.errors import BusinessRejection
from common.participant import Action, StepContext, refuse_second_step, require_id
from common.store import Connection
from protos.sagawire.v1 import order_saga_pb2
from services.payment import domain, store
from services.validation import (
    PRICED_ORDER,
    RETURNED_ORDER,
    validate_order,
    validate_placed_by,
    validate_total,
)

Data = order_saga_pb2.OrderSagaData


def _validate(data: Data) -> None:
    validate_order(data)
    require_id(data.customer_id, "payload.customer_id")
    validate_total(data)


def _charge(conn: Connection, ctx: StepContext, data: Data) -> Data:
    if store.charge_of_saga(conn, ctx.saga_id) is not None:
        refuse_second_step(ctx, "a charge")
    current = store.account(conn, data.customer_id)
    charged = domain.charge(current, data.customer_id, data.total.amount_minor, data.total.currency)
    store.save_account(conn, charged)
    charge_id = str(uuid.uuid4())
    store.add_charge(
        conn,
        charge_id,
        ctx.saga_id,
        data.customer_id,
        data.total.amount_minor,
        data.total.currency,
    )
    return Data(charge_id=charge_id)


def _refund(conn: Connection, ctx: StepContext, data: Data, charged: Data) -> None:
    # Refund the charge as recorded, not the amount the request claims.
    row = store.charge_of_saga(conn, ctx.saga_id)
    if row is None or row["status"] != "captured":
        return
    acct = store.account(conn, row["customer_id"])
    assert acct is not None  # a charge always references an account (foreign key)
    store.save_account(conn, domain.refund(acct, row["amount_minor"]))
    store.mark_refunded(conn, row["charge_id"])


CHARGE = Action(
    name="charge",
    compensation="refund",
    payload_type=Data,
    validate=_validate,
    execute=_charge,
    compensate=_refund,
    binds=PRICED_ORDER,
)


def _validate_return(data: Data) -> None:
    _validate(data)
    validate_placed_by(data)


def _refund_return(conn: Connection, ctx: StepContext, data: Data) -> Data:
    if store.return_refund_of_saga(conn, ctx.saga_id) is not None:
        refuse_second_step(ctx, "a refund")
    # The charge the order's own saga made, as recorded: its amount, its customer.
    row = store.charge_of_saga(conn, data.placed_by_saga_id)
    if row is None or row["customer_id"] != data.customer_id:
        raise BusinessRejection(
            "NOTHING_TO_REFUND", f"no charge of customer {data.customer_id} for this order"
        )
    if row["status"] != "captured":
        raise BusinessRejection("ALREADY_REFUNDED", f"charge {row['charge_id']} was refunded")
    acct = store.account(conn, row["customer_id"])
    assert acct is not None  # a charge always references an account (foreign key)
    store.save_account(conn, domain.refund(acct, row["amount_minor"]))
    store.mark_refunded(conn, row["charge_id"])
    store.add_return_refund(conn, ctx.saga_id, row)
    return Data(charge_id=row["charge_id"])


def _revoke_refund(conn: Connection, ctx: StepContext, data: Data, refunded: Data) -> None:
    # Take back what this saga refunded, as recorded; the charge is captured again.
    row = store.return_refund_of_saga(conn, ctx.saga_id)
    if row is None or row["status"] != "refunded":
        return
    acct = store.account(conn, row["customer_id"])
    assert acct is not None
    store.save_account(
        conn, domain.charge(acct, row["customer_id"], row["amount_minor"], acct.currency)
    )
    store.mark_captured(conn, row["charge_id"])
    store.mark_refund_revoked(conn, ctx.saga_id)


REFUND_RETURN = Action(
    name="refund_return",
    compensation="revoke_refund",
    payload_type=Data,
    validate=_validate_return,
    execute=_refund_return,
    compensate=_revoke_refund,
    binds=RETURNED_ORDER,
)

ACTIONS = (CHARGE, REFUND_RETURN)
