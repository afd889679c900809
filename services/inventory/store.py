"""Inventory's SQLite tables and the statements on them (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from common.store import Connection, Row
from services.inventory.domain import Line, StockLevel

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL CHECK (reserved >= 0)
);
CREATE TABLE IF NOT EXISTS reservation (
    saga_id  TEXT NOT NULL,
    sku      TEXT NOT NULL REFERENCES stock (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    status   TEXT NOT NULL CHECK (status IN ('reserved', 'released')),
    PRIMARY KEY (saga_id, sku)
);
"""


def load_seed(conn: Connection, seed: Mapping[str, Any]) -> None:
    for sku, units in seed["inventory"]["stock"].items():
        conn.execute(
            "INSERT INTO stock (sku, available, reserved) VALUES (?, ?, 0)", (sku, int(units))
        )


def _level(row: Row) -> StockLevel:
    return StockLevel(row["sku"], row["available"], row["reserved"])


def levels(conn: Connection, skus: Iterable[str]) -> dict[str, StockLevel]:
    wanted = sorted(set(skus))
    marks = ",".join("?" * len(wanted))
    rows = conn.execute(f"SELECT * FROM stock WHERE sku IN ({marks})", wanted)
    return {row["sku"]: _level(row) for row in rows}


def list_levels(conn: Connection, after: str | None, limit: int) -> list[StockLevel]:
    """By SKU; ``after`` is the previous page's last SKU."""
    rows = conn.execute(
        "SELECT * FROM stock WHERE sku > ? ORDER BY sku LIMIT ?", (after or "", limit)
    )
    return [_level(row) for row in rows]


def save_levels(conn: Connection, updated: Mapping[str, StockLevel]) -> None:
    conn.executemany(
        "UPDATE stock SET available = ?, reserved = ? WHERE sku = ?",
        [(lv.available, lv.reserved, lv.sku) for lv in updated.values()],
    )


def add_reservation(conn: Connection, saga_id: str, lines: Iterable[Line]) -> None:
    conn.executemany(
        "INSERT INTO reservation (saga_id, sku, quantity, status) VALUES (?, ?, ?, 'reserved')",
        [(saga_id, line.sku, line.quantity) for line in lines],
    )


def reservation_lines(conn: Connection, saga_id: str) -> list[tuple[Line, str]]:
    rows = conn.execute(
        "SELECT sku, quantity, status FROM reservation WHERE saga_id = ? ORDER BY sku", (saga_id,)
    )
    return [(Line(row["sku"], row["quantity"]), row["status"]) for row in rows]


def mark_released(conn: Connection, saga_id: str) -> None:
    conn.execute("UPDATE reservation SET status = 'released' WHERE saga_id = ?", (saga_id,))
