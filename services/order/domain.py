"""Order rules: price an order, move it PENDING -> APPROVED or PENDING -> CANCELLED, and
take an approved one back: APPROVED -> RETURNED.

A cancelled or returned order never changes again; an approved one only by a return,
once. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

from common.errors import BusinessRejection


class Status(Enum):
    PENDING = "pending"
    APPROVED = "approved"
    CANCELLED = "cancelled"
    RETURNED = "returned"


def price(prices: Mapping[str, int], lines: Sequence[tuple[str, int]]) -> int:
    """The order's total in minor units.

    Raises:
        BusinessRejection: UNKNOWN_SKU for a SKU with no price.
    """
    total = 0
    for sku, quantity in lines:
        unit = prices.get(sku)
        if unit is None:
            raise BusinessRejection("UNKNOWN_SKU", f"unknown SKU {sku}", sku=sku)
        total += unit * quantity
    return total


def approve(status: Status) -> Status:
    """PENDING -> APPROVED. Raises BusinessRejection(ORDER_FINISHED) otherwise."""
    if status is Status.APPROVED:
        return status
    if status is not Status.PENDING:
        raise BusinessRejection("ORDER_FINISHED", f"a {status.value} order cannot be approved")
    return Status.APPROVED


def cancel(status: Status) -> Status:
    """PENDING -> CANCELLED. Raises BusinessRejection(ORDER_FINISHED) for an approved order."""
    if status is Status.CANCELLED:
        return status
    if status is not Status.PENDING:
        raise BusinessRejection("ORDER_FINISHED", f"a {status.value} order cannot be cancelled")
    return Status.CANCELLED


def check_returnable(status: Status) -> None:
    """Only an approved order can be returned, and only once.

    Raises:
        BusinessRejection: ALREADY_RETURNED, or ORDER_NOT_RETURNABLE for an order that
            was never approved.
    """
    if status is Status.RETURNED:
        raise BusinessRejection("ALREADY_RETURNED", "the order was already returned")
    if status is not Status.APPROVED:
        raise BusinessRejection(
            "ORDER_NOT_RETURNABLE",
            f"a {status.value} order cannot be returned, only an approved one",
        )


def mark_returned(status: Status) -> Status:
    """APPROVED -> RETURNED (the end of an accepted return)."""
    if status is Status.RETURNED:
        return status
    check_returnable(status)
    return Status.RETURNED
