"""Inventory rules: stock per SKU, reserved against sagas. Pure: no I/O, no gRPC.

Invariants: available >= 0 and reserved >= 0 always; available + reserved of a
SKU changes only by restocking, never by reserve/release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from common.errors import BusinessRejection


@dataclass(frozen=True)
class StockLevel:
    sku: str
    available: int
    reserved: int

    @property
    def total(self) -> int:
        return self.available + self.reserved


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


def merge_lines(lines: Sequence[Line]) -> list[Line]:
    """One line per SKU (quantities of repeated SKUs added), in first-seen order."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return [Line(sku, qty) for sku, qty in totals.items()]


def reserve(levels: Mapping[str, StockLevel], lines: Sequence[Line]) -> dict[str, StockLevel]:
    """Move stock from available to reserved for every line, or for none.

    Raises:
        BusinessRejection: UNKNOWN_SKU or INSUFFICIENT_STOCK.
    """
    updated: dict[str, StockLevel] = {}
    for line in merge_lines(lines):
        level = levels.get(line.sku)
        if level is None:
            raise BusinessRejection("UNKNOWN_SKU", f"unknown SKU {line.sku}", sku=line.sku)
        if line.quantity > level.available:
            raise BusinessRejection(
                "INSUFFICIENT_STOCK",
                f"{line.sku}: {line.quantity} requested, {level.available} available",
                sku=line.sku,
            )
        updated[line.sku] = replace(
            level,
            available=level.available - line.quantity,
            reserved=level.reserved + line.quantity,
        )
    return updated


def release(levels: Mapping[str, StockLevel], lines: Sequence[Line]) -> dict[str, StockLevel]:
    """Give reserved stock back to available (the compensation of :func:`reserve`)."""
    updated: dict[str, StockLevel] = {}
    for line in merge_lines(lines):
        level = levels[line.sku]
        if line.quantity > level.reserved:
            raise ValueError(f"{line.sku}: releasing {line.quantity} of {level.reserved} reserved")
        updated[line.sku] = replace(
            level,
            available=level.available + line.quantity,
            reserved=level.reserved - line.quantity,
        )
    return updated
