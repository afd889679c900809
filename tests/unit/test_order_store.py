"""The order service's store: a file made before returns is brought up to date in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.order import store

# The orders table as it was before returns (its CHECK knew three statuses).
_BEFORE_RETURNS = """
CREATE TABLE orders (
    order_id     TEXT PRIMARY KEY,
    saga_id      TEXT NOT NULL UNIQUE,
    customer_id  TEXT NOT NULL,
    destination  TEXT NOT NULL,
    items        BLOB NOT NULL,
    total_minor  INTEGER NOT NULL CHECK (total_minor >= 0),
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'cancelled')),
    reason       TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX orders_by_time ON orders (created_at, order_id);
INSERT INTO orders VALUES ('o-1', 's-1', 'alice', 'Berlin', x'', 800, 'EUR', 'approved', '',
                           '2026-01-01', '2026-01-01');
"""


def test_an_orders_table_from_before_returns_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "order.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(_BEFORE_RETURNS)
    conn.executescript(store.SCHEMA)  # what a start does: new tables, the old one as it is
    conn.execute("BEGIN")
    store.migrate(conn)
    conn.execute("COMMIT")
    store.migrate(conn)  # idempotent
    store.set_status(conn, "o-1", "returned")
    row = store.order(conn, "o-1")
    assert row is not None and (row["status"], row["customer_id"]) == ("returned", "alice")
    indexes = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "orders_by_time" in indexes
