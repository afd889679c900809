"""Edge validation of the saga data (place_order, return_order), shared by all four services."""

from __future__ import annotations

from common.errors import InvalidArgument
from common.participant import require_id
from contract.limits import MAX_AMOUNT_MINOR, MAX_DESTINATION_LENGTH, MAX_ITEMS, MAX_QUANTITY
from protos.sagawire.v1 import order_saga_pb2

# What binds a request to its saga's order (Action.binds, the barrier's fingerprint):
# the order as placed, i.e. the saga's input, and, for every step after create_order,
# as priced. Never a later step's result or the cancel reason: those differ between
# the requests of one step (its retries, its compensation, the events of either mode).
PLACED_ORDER = ("order_id", "customer_id", "items", "destination")
PRICED_ORDER = (*PLACED_ORDER, "total")
# A return: the order and customer its request names, and, for every step after
# accept_return, the order as that step found it (its items, total, placing saga).
RETURN_REQUEST = ("order_id", "customer_id")
RETURNED_ORDER = (*RETURN_REQUEST, "items", "total", "placed_by_saga_id")


def validate_items(data: order_saga_pb2.OrderSagaData) -> None:
    """Items: 1..MAX_ITEMS lines, each with a SKU and a quantity in 1..MAX_QUANTITY."""
    if not data.items:
        raise InvalidArgument("payload.items", "must not be empty")
    if len(data.items) > MAX_ITEMS:
        raise InvalidArgument("payload.items", f"must have at most {MAX_ITEMS} lines")
    for i, item in enumerate(data.items):
        require_id(item.sku, f"payload.items[{i}].sku")
        if not 0 < item.quantity <= MAX_QUANTITY:
            raise InvalidArgument(
                f"payload.items[{i}].quantity", f"must be between 1 and {MAX_QUANTITY}"
            )


def validate_order(data: order_saga_pb2.OrderSagaData) -> None:
    """What every step needs: the order id."""
    require_id(data.order_id, "payload.order_id")


def validate_placed_by(data: order_saga_pb2.OrderSagaData) -> None:
    """A return's later steps act on what the saga that placed the order did."""
    require_id(data.placed_by_saga_id, "payload.placed_by_saga_id")


def validate_total(data: order_saga_pb2.OrderSagaData) -> None:
    if not 0 < data.total.amount_minor <= MAX_AMOUNT_MINOR:
        raise InvalidArgument(
            "payload.total.amount_minor", f"must be between 1 and {MAX_AMOUNT_MINOR}"
        )
    if len(data.total.currency) != 3 or not data.total.currency.isalpha():
        raise InvalidArgument("payload.total.currency", "must be a 3-letter ISO 4217 code")


def validate_destination(data: order_saga_pb2.OrderSagaData) -> None:
    if not data.destination.strip():
        raise InvalidArgument("payload.destination", "must not be empty")
    if len(data.destination) > MAX_DESTINATION_LENGTH:
        raise InvalidArgument(
            "payload.destination", f"must be at most {MAX_DESTINATION_LENGTH} characters"
        )
