"""The barrier: what makes retries, duplicates and recovery safe for a participant.

Called inside the same SQLite transaction as the business change, keyed by
(saga id, step):

- a duplicate execute returns the first result (or the first rejection), no second effect;
- a compensate with no execute before it records a marker and does nothing ("null");
- an execute after that marker ("hanging") is refused: :class:`~common.errors.Aborted`;
- a duplicate compensate has no effect.

Business rejections are recorded too, so a retried execute cannot turn a "no"
into a "yes" after the coordinator has moved on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from common.errors import Aborted, BusinessRejection
from common.store import utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS barrier (
    saga_id    TEXT NOT NULL,
    step       TEXT NOT NULL,
    phase      TEXT NOT NULL CHECK (phase IN ('execute', 'compensate')),
    outcome    TEXT NOT NULL CHECK (outcome IN ('applied', 'rejected', 'null')),
    result     BLOB,
    reason     TEXT,
    message    TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (saga_id, step, phase)
);
"""


class Outcome(Enum):
    APPLIED = "applied"
    REPLAYED = "replayed"
    NULL_COMPENSATION = "null"


@dataclass(frozen=True)
class Guarded:
    """What the barrier let through: the action's result, or its recorded rejection."""

    outcome: Outcome
    result: bytes = b""
    rejection: BusinessRejection | None = None


def _rows(conn: sqlite3.Connection, saga_id: str, step: str) -> dict[str, sqlite3.Row]:
    cursor = conn.execute(
        "SELECT phase, outcome, result, reason, message FROM barrier"
        " WHERE saga_id = ? AND step = ?",
        (saga_id, step),
    )
    return {row["phase"]: row for row in cursor}


def _record(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    phase: str,
    outcome: str,
    result: bytes = b"",
    rejection: BusinessRejection | None = None,
) -> None:
    conn.execute(
        "INSERT INTO barrier (saga_id, step, phase, outcome, result, reason, message, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            saga_id,
            step,
            phase,
            outcome,
            result,
            rejection.reason if rejection else None,
            rejection.message if rejection else None,
            utc_now().isoformat(),
        ),
    )


def guarded_execute(
    conn: sqlite3.Connection, saga_id: str, step: str, action: Callable[[], bytes]
) -> Guarded:
    """Run ``action`` once per (saga, step), inside the caller's transaction.

    A business rejection raised by ``action`` undoes whatever it wrote, is
    recorded, and is returned (not raised) so the transaction still commits.
    """
    rows = _rows(conn, saga_id, step)
    if "compensate" in rows:
        raise Aborted(f"step {step!r} of saga {saga_id} was compensated; execute refused")
    first = rows.get("execute")
    if first is not None:
        if first["outcome"] == "rejected":
            replayed = BusinessRejection(first["reason"], first["message"])
            return Guarded(Outcome.REPLAYED, rejection=replayed)
        return Guarded(Outcome.REPLAYED, result=first["result"])
    conn.execute("SAVEPOINT guarded_action")
    try:
        result = action()
    except BusinessRejection as rejection:
        conn.execute("ROLLBACK TO guarded_action")
        conn.execute("RELEASE guarded_action")
        _record(conn, saga_id, step, "execute", "rejected", rejection=rejection)
        return Guarded(Outcome.APPLIED, rejection=rejection)
    conn.execute("RELEASE guarded_action")
    _record(conn, saga_id, step, "execute", "applied", result=result)
    return Guarded(Outcome.APPLIED, result=result)


def guarded_compensate(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    compensation: Callable[[bytes], bytes],
) -> Guarded:
    """Undo the step's execute once, given its recorded result; a no-op if it never ran."""
    rows = _rows(conn, saga_id, step)
    if "compensate" in rows:
        return Guarded(Outcome.REPLAYED, result=rows["compensate"]["result"] or b"")
    first = rows.get("execute")
    if first is None or first["outcome"] == "rejected":
        _record(conn, saga_id, step, "compensate", "null")
        return Guarded(Outcome.NULL_COMPENSATION)
    result = compensation(first["result"])
    _record(conn, saga_id, step, "compensate", "applied", result=result)
    return Guarded(Outcome.APPLIED, result=result)


def was_executed(conn: sqlite3.Connection, saga_id: str, step: str) -> bool:
    """Whether the step's execute took effect (applied, not rejected)."""
    first = _rows(conn, saga_id, step).get("execute")
    return first is not None and first["outcome"] == "applied"
