"""Saga records from the rows of a SQL saga log, shared by the SQLite and PostgreSQL
adapters: the same columns, read the same way. The adapters differ only in how a
time is stored (ISO text in SQLite, ``timestamptz`` in PostgreSQL, handed in as
``time``) and in their parameter placeholder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from coordinator.log.records import (
    AttemptOutcome,
    AttemptRecord,
    Direction,
    ErrorDetail,
    Failure,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
)
from coordinator.log.saga_log import SagaFilter


class Row(Protocol):
    """A row whose columns are read by name (``sqlite3.Row``, psycopg's dict rows)."""

    def __getitem__(self, key: str, /) -> Any: ...


# A stored time (or NULL) as a datetime (or None).
ReadTime = Callable[[Any], datetime | None]


def _required(time: ReadTime, value: Any) -> datetime:
    read = time(value)
    assert read is not None  # a NOT NULL column
    return read


def saga_from_row(row: Row, steps: tuple[StepRecord, ...], time: ReadTime) -> SagaRecord:
    failure = None
    if row["failure_code"] is not None:
        failure = Failure(
            step=row["failure_step"],
            code=row["failure_code"],
            reason=row["failure_reason"],
            message=row["failure_message"],
        )
    return SagaRecord(
        saga_id=row["saga_id"],
        definition=row["definition"],
        mode=row["mode"],
        status=SagaStatus(row["status"]),
        direction=Direction(row["direction"]),
        data=row["data"],
        created_at=_required(time, row["created_at"]),
        updated_at=_required(time, row["updated_at"]),
        deadline=_required(time, row["deadline"]),
        steps=steps,
        idempotency_key=row["idempotency_key"] or "",
        request_hash=row["request_hash"],
        failure=failure,
        round=row["round"],
        finished_at=time(row["finished_at"]),
        trace_id=row["trace_id"],
        last_seq=row["last_seq"],
    )


def attempt_from_row(row: Row, time: ReadTime) -> AttemptRecord:
    error = None
    if row["error_code"] is not None:
        error = ErrorDetail(row["error_code"], row["error_reason"], row["error_message"])
    return AttemptRecord(
        phase=Phase(row["phase"]),
        number=row["number"],
        round=row["round"],
        started_at=_required(time, row["started_at"]),
        finished_at=time(row["finished_at"]),
        outcome=AttemptOutcome(row["outcome"]) if row["outcome"] else None,
        error=error,
    )


def filter_clauses(
    where: SagaFilter, placeholder: str, stored_time: Callable[[datetime], Any]
) -> tuple[list[str], list[Any]]:
    """The SQL conditions (and their parameters) of ``where``; ``stored_time`` turns a
    bound into what the ``created_at`` column holds."""
    clauses: list[str] = []
    args: list[Any] = []
    if where.definition:
        clauses.append(f"definition = {placeholder}")
        args.append(where.definition)
    if where.mode:
        clauses.append(f"mode = {placeholder}")
        args.append(where.mode)
    if where.created_after is not None:
        clauses.append(f"created_at >= {placeholder}")
        args.append(stored_time(where.created_after))
    if where.created_before is not None:
        clauses.append(f"created_at < {placeholder}")
        args.append(stored_time(where.created_before))
    return clauses, args
