"""Shipping's SQLite tables and the statements on them (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.store import Connection, Row, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS unserviceable (destination TEXT PRIMARY KEY COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS shipment (
    shipment_id     TEXT PRIMARY KEY,
    saga_id         TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    destination     TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('scheduled', 'cancelled')),
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shipment_by_time ON shipment (created_at, shipment_id);
"""


def load_seed(conn: Connection, seed: Mapping[str, Any]) -> None:
    conn.executemany(
        "INSERT INTO unserviceable (destination) VALUES (?)",
        [(d,) for d in seed["shipping"]["unserviceable"]],
    )


def unserviceable(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT destination FROM unserviceable")]


def add_shipment(
    conn: Connection,
    shipment_id: str,
    saga_id: str,
    order_id: str,
    destination: str,
    tracking_number: str,
) -> None:
    conn.execute(
        "INSERT INTO shipment (shipment_id, saga_id, order_id, destination, tracking_number,"
        " status, created_at) VALUES (?, ?, ?, ?, ?, 'scheduled', ?)",
        (shipment_id, saga_id, order_id, destination, tracking_number, utc_now().isoformat()),
    )


def shipment(conn: Connection, column: str, value: str) -> Row | None:
    assert column in ("shipment_id", "saga_id")  # never interpolate caller input
    row: Row | None = conn.execute(
        f"SELECT * FROM shipment WHERE {column} = ?", (value,)
    ).fetchone()
    return row


def list_shipments(conn: Connection, before: tuple[str, str] | None, limit: int) -> list[Row]:
    """Newest first; ``before`` is the (created_at, shipment_id) of the previous page's last."""
    where, args = ("WHERE (created_at, shipment_id) < (?, ?)", list(before)) if before else ("", [])
    return conn.execute(
        f"SELECT * FROM shipment {where} ORDER BY created_at DESC, shipment_id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()


def cancel(conn: Connection, saga_id: str) -> None:
    conn.execute("UPDATE shipment SET status = 'cancelled' WHERE saga_id = ?", (saga_id,))
