"""Order's SQLite tables and the statements on them (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.store import Connection, Row, utc_now
from protos.sagawire.v1 import order_saga_pb2

_ORDERS = """
CREATE TABLE IF NOT EXISTS {name} (
    order_id     TEXT PRIMARY KEY,
    saga_id      TEXT NOT NULL UNIQUE,
    customer_id  TEXT NOT NULL,
    destination  TEXT NOT NULL,
    items        BLOB NOT NULL,
    total_minor  INTEGER NOT NULL CHECK (total_minor >= 0),
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'approved', 'cancelled', 'returned')),
    reason       TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS price (
    sku        TEXT PRIMARY KEY,
    unit_minor INTEGER NOT NULL CHECK (unit_minor > 0),
    currency   TEXT NOT NULL
);
"""
    + _ORDERS.format(name="orders")
    + """
CREATE INDEX IF NOT EXISTS orders_by_time ON orders (created_at, order_id);
-- Returns of approved orders, one row per return_order saga: accepted, then closed (the
-- order is returned) or withdrawn (the saga turned back). An order has at most one
-- return that is not withdrawn.
CREATE TABLE IF NOT EXISTS order_return (
    saga_id    TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('accepted', 'closed', 'withdrawn')),
    reason     TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS order_return_open
    ON order_return (order_id) WHERE status != 'withdrawn';
"""
)


def migrate(conn: Connection) -> None:
    """Let an orders table made before returns hold the 'returned' status; idempotent.

    SQLite cannot change a CHECK constraint in place: the table is copied into one made
    with the current constraint, in the caller's transaction.
    """
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'orders'").fetchone()
    if row is None or "'returned'" in row["sql"]:
        return
    conn.execute(_ORDERS.format(name="orders_migrated"))
    conn.execute("INSERT INTO orders_migrated SELECT * FROM orders")
    conn.execute("DROP TABLE orders")
    conn.execute("ALTER TABLE orders_migrated RENAME TO orders")
    conn.execute("CREATE INDEX IF NOT EXISTS orders_by_time ON orders (created_at, order_id)")


def load_seed(conn: Connection, seed: Mapping[str, Any]) -> None:
    conn.executemany(
        "INSERT INTO price (sku, unit_minor, currency) VALUES (?, ?, ?)",
        [(sku, int(unit), seed["currency"]) for sku, unit in seed["order"]["prices"].items()],
    )


def prices(conn: Connection) -> tuple[dict[str, int], str]:
    rows = conn.execute("SELECT sku, unit_minor, currency FROM price").fetchall()
    currency = rows[0]["currency"] if rows else "EUR"
    return {r["sku"]: r["unit_minor"] for r in rows}, currency


def add_order(
    conn: Connection,
    saga_id: str,
    data: order_saga_pb2.OrderSagaData,
    total_minor: int,
    currency: str,
) -> None:
    now = utc_now().isoformat()
    items = order_saga_pb2.OrderSagaData(items=data.items).SerializeToString()
    conn.execute(
        "INSERT INTO orders (order_id, saga_id, customer_id, destination, items, total_minor,"
        " currency, status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (
            data.order_id,
            saga_id,
            data.customer_id,
            data.destination,
            items,
            total_minor,
            currency,
            now,
            now,
        ),
    )


def order(conn: Connection, order_id: str) -> Row | None:
    row: Row | None = conn.execute(
        "SELECT * FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    return row


def order_of_saga(conn: Connection, saga_id: str) -> Row | None:
    """The order a saga created (one at most: orders.saga_id is unique)."""
    row: Row | None = conn.execute("SELECT * FROM orders WHERE saga_id = ?", (saga_id,)).fetchone()
    return row


def set_status(conn: Connection, order_id: str, status: str, reason: str = "") -> None:
    conn.execute(
        "UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE order_id = ?",
        (status, reason, utc_now().isoformat(), order_id),
    )


def list_orders(
    conn: Connection, status: str | None, before: tuple[str, str] | None, limit: int
) -> list[Row]:
    """Newest first; ``before`` is the (created_at, order_id) of the previous page's last row."""
    clauses: list[str] = []
    args: list[object] = []
    if status:
        clauses.append("status = ?")
        args.append(status)
    if before:
        clauses.append("(created_at, order_id) < (?, ?)")
        args.extend(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return conn.execute(
        f"SELECT * FROM orders {where} ORDER BY created_at DESC, order_id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()


def open_return(conn: Connection, order_id: str) -> Row | None:
    """The order's return that is not withdrawn (accepted or closed), if any."""
    row: Row | None = conn.execute(
        "SELECT * FROM order_return WHERE order_id = ? AND status != 'withdrawn'", (order_id,)
    ).fetchone()
    return row


def add_return(conn: Connection, saga_id: str, order_id: str) -> None:
    now = utc_now().isoformat()
    conn.execute(
        "INSERT INTO order_return (saga_id, order_id, status, created_at, updated_at)"
        " VALUES (?, ?, 'accepted', ?, ?)",
        (saga_id, order_id, now, now),
    )


def return_of_saga(conn: Connection, saga_id: str) -> Row | None:
    """The return a return_order saga accepted (one at most)."""
    row: Row | None = conn.execute(
        "SELECT * FROM order_return WHERE saga_id = ?", (saga_id,)
    ).fetchone()
    return row


def set_return_status(conn: Connection, saga_id: str, status: str, reason: str = "") -> None:
    conn.execute(
        "UPDATE order_return SET status = ?, reason = ?, updated_at = ? WHERE saga_id = ?",
        (status, reason, utc_now().isoformat(), saga_id),
    )
