"""Payment's SQLite tables and the statements on them (inside the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.store import Connection, Row, utc_now
from services.payment.domain import Account

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    customer_id   TEXT PRIMARY KEY,
    balance_minor INTEGER NOT NULL CHECK (balance_minor >= 0),
    currency      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charge (
    charge_id    TEXT PRIMARY KEY,
    saga_id      TEXT NOT NULL UNIQUE,
    customer_id  TEXT NOT NULL REFERENCES account (customer_id),
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('captured', 'refunded')),
    created_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charge_by_customer ON charge (customer_id, created_at);
CREATE INDEX IF NOT EXISTS charge_by_time ON charge (created_at, charge_id);
-- Refunds of returned orders, one per return_order saga: the charge it gave back
-- (marked refunded), or revoked again if the return turned back.
CREATE TABLE IF NOT EXISTS return_refund (
    saga_id      TEXT PRIMARY KEY,
    charge_id    TEXT NOT NULL REFERENCES charge (charge_id),
    customer_id  TEXT NOT NULL REFERENCES account (customer_id),
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    status       TEXT NOT NULL CHECK (status IN ('refunded', 'revoked')),
    created_at   TEXT NOT NULL
);
"""


def load_seed(conn: Connection, seed: Mapping[str, Any]) -> None:
    for customer_id, balance in seed["payment"]["accounts"].items():
        conn.execute(
            "INSERT INTO account (customer_id, balance_minor, currency) VALUES (?, ?, ?)",
            (customer_id, int(balance), seed["currency"]),
        )


def _account(row: Row) -> Account:
    return Account(row["customer_id"], row["balance_minor"], row["currency"])


def account(conn: Connection, customer_id: str) -> Account | None:
    row = conn.execute("SELECT * FROM account WHERE customer_id = ?", (customer_id,)).fetchone()
    return _account(row) if row else None


def list_accounts(conn: Connection, after: str | None, limit: int) -> list[Account]:
    """By customer id; ``after`` is the previous page's last customer."""
    rows = conn.execute(
        "SELECT * FROM account WHERE customer_id > ? ORDER BY customer_id LIMIT ?",
        (after or "", limit),
    )
    return [_account(r) for r in rows]


def save_account(conn: Connection, acct: Account) -> None:
    conn.execute(
        "UPDATE account SET balance_minor = ? WHERE customer_id = ?",
        (acct.balance_minor, acct.customer_id),
    )


def add_charge(
    conn: Connection,
    charge_id: str,
    saga_id: str,
    customer_id: str,
    amount_minor: int,
    currency: str,
) -> None:
    conn.execute(
        "INSERT INTO charge (charge_id, saga_id, customer_id, amount_minor, currency, status,"
        " created_at) VALUES (?, ?, ?, ?, ?, 'captured', ?)",
        (charge_id, saga_id, customer_id, amount_minor, currency, utc_now().isoformat()),
    )


def charge_of_saga(conn: Connection, saga_id: str) -> Row | None:
    row: Row | None = conn.execute("SELECT * FROM charge WHERE saga_id = ?", (saga_id,)).fetchone()
    return row


def mark_refunded(conn: Connection, charge_id: str) -> None:
    conn.execute("UPDATE charge SET status = 'refunded' WHERE charge_id = ?", (charge_id,))


def mark_captured(conn: Connection, charge_id: str) -> None:
    conn.execute("UPDATE charge SET status = 'captured' WHERE charge_id = ?", (charge_id,))


def add_return_refund(conn: Connection, saga_id: str, charge: Row) -> None:
    conn.execute(
        "INSERT INTO return_refund (saga_id, charge_id, customer_id, amount_minor, status,"
        " created_at) VALUES (?, ?, ?, ?, 'refunded', ?)",
        (
            saga_id,
            charge["charge_id"],
            charge["customer_id"],
            charge["amount_minor"],
            utc_now().isoformat(),
        ),
    )


def return_refund_of_saga(conn: Connection, saga_id: str) -> Row | None:
    row: Row | None = conn.execute(
        "SELECT * FROM return_refund WHERE saga_id = ?", (saga_id,)
    ).fetchone()
    return row


def mark_refund_revoked(conn: Connection, saga_id: str) -> None:
    conn.execute("UPDATE return_refund SET status = 'revoked' WHERE saga_id = ?", (saga_id,))


def charges(
    conn: Connection,
    customer_id: str,
    saga_id: str,
    before: tuple[str, str] | None,
    limit: int,
) -> list[Row]:
    """Newest first; ``before`` is the (created_at, charge_id) of the previous page's last."""
    clauses: list[str] = []
    args: list[object] = []
    if customer_id:
        clauses.append("customer_id = ?")
        args.append(customer_id)
    if saga_id:
        clauses.append("saga_id = ?")
        args.append(saga_id)
    if before:
        clauses.append("(created_at, charge_id) < (?, ?)")
        args.extend(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return conn.execute(
        f"SELECT * FROM charge {where} ORDER BY created_at DESC, charge_id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
