"""Order rules: price an order, and move it PENDING -> APPROVED or PENDING -> CANCELLED.

A finished order (approved or cancelled) never changes again. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

from common.errors import BusinessRejection


class Status(Enum):
    PENDING = "pending"
    APPROVED = "approved"
    CANCELLED = "cancelled"


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
