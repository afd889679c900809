"""The barrier: what makes retries, duplicates and recovery safe for a participant.

Called inside the same SQLite transaction as the business change, keyed by
(saga id, step):

- a duplicate execute returns the first result (or the first rejection), no second effect;
- a compensate with no execute before it records a marker and does nothing ("null");
- an execute after that marker ("hanging") is refused: :class:`~common.errors.Aborted`;
- a duplicate compensate has no effect.

Business rejections are recorded too, so a retried execute cannot turn a "no"
into a "yes" after the coordinator has moved on.

**Every effect is bound to its request.** Each row keeps the fingerprint of the
request that wrote it (:func:`fingerprint`: the step's action and the payload
fields the action declares it acts on, serialized deterministically). The key
alone no longer decides:

- an execute whose fingerprint differs from the first one's is not a repeat of
  it: refused, :class:`~common.errors.RequestMismatch`, with no effect, so a
  request sent first under a saga's key (``total=1``) can never be replayed to
  the real caller as if it were its result;
- a compensate of an applied execute must carry that execute's fingerprint (its
  payload names the same order, customer, amount...), or it is refused the same
  way and undoes nothing; it then undoes what the service recorded for the saga;
- a null compensation keeps its own fingerprint. A later execute with the same one
  is the coordinator's own late request: refused as hanging, as above. One with a
  different fingerprint is not the request that compensation was about: the
  marker cannot have been the coordinator's (its compensate and execute of a
  step carry the same bound fields), so it is dropped and the execute runs. A
  compensate sent first by someone else therefore cannot kill a saga unless it
  names exactly that saga's order, customer and items. (The defence against
  someone else calling at all is mutual TLS and the per-method table: only the
  coordinator may call Execute and Compensate; this is the second line.)

A duplicate compensate is answered from its row whatever it carries: it has no
effect either way. Rows written before fingerprints existed have none (NULL) and
match any request, as the key alone did.

**Retention: rows of finished sagas go, and their late duplicates are still refused.**
The barrier keeps a saga's rows until the coordinator has said the saga finished
(COMPLETED or COMPENSATED: ``Participant.SagasFinished``, :func:`mark_finished`) and
the retention window ``W`` (plus the allowed clock skew ``M``) has passed since
(:func:`prune_finished`). A saga that needs attention has not finished, so its rows
stay however long it waits for ``RetrySaga``. Once rows are gone, a late duplicate
finds no row and would run again; so the barrier refuses any request of a saga
*created* longer than ``W`` ago for a step it holds no row of (the **horizon**):
an execute with :class:`~common.errors.SagaExpired` (FAILED_PRECONDITION, nothing
done), a compensate as a null compensation that records nothing (there is nothing to
undo: see below). The creation time is read from the saga id itself, a UUIDv7 the
coordinator made (common/saga_ids.py), so there is nothing to store per saga.

Why that is safe. *Every deleted row is covered*: rows of saga S go only when S
finished more than ``W + M`` ago, and S was created before it finished, so from then
on S is older than the horizon (as long as the coordinator's clock, which stamped
the id, runs less than ``M`` ahead of the service's), and a step with no row is
refused. A saga's rows are deleted together, in one statement, so no step is left
with half its rows (an execute without the compensate that undid it). *Nothing
needed is refused*: a step that has a row is answered by the barrier as always,
whatever the saga's age. A step with no row of a saga older than ``W`` is either a
late duplicate of a pruned saga (refused: the point), or a step of a saga still
unfinished after ``W`` that never reached this service before (rows of unfinished
sagas are never deleted). For a compensate that means the execute never took
effect here, so a null compensation is the true answer; for an execute, the saga
is far past its deadline (seconds to minutes against a window of days), so
refusing to start a new step is what its deadline asks for. Ids that carry no time
(random UUIDs from before UUIDv7 ids) are never refused by the horizon, and their
rows are never pruned: there is a fixed number of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from google.protobuf.message import Message

from common import saga_ids
from common.errors import Aborted, BusinessRejection, RequestMismatch, SagaExpired
from common.store import Connection, Row, utc_now

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
    -- The request's fingerprint (see fingerprint()); NULL in rows older than it.
    fingerprint TEXT,
    PRIMARY KEY (saga_id, step, phase)
);
-- Sagas the coordinator said finished (COMPLETED or COMPENSATED), since when: their
-- rows above are pruned once the retention window has passed (see the module doc).
CREATE TABLE IF NOT EXISTS barrier_finished (
    saga_id     TEXT PRIMARY KEY,
    finished_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS barrier_finished_by_time ON barrier_finished (finished_at);
"""


def migrate(conn: Connection) -> None:
    """Bring a barrier table made before fingerprints up to date; idempotent."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(barrier)")}
    if "fingerprint" not in columns:
        conn.execute("ALTER TABLE barrier ADD COLUMN fingerprint TEXT")


def fingerprint(action: str, payload: Message, fields: Collection[str] = ()) -> str:
    """What binds a request to its effect: sha256 of the action's name and the payload.

    Only ``fields`` of the payload count when given (the fields the action acts on);
    none given means the whole payload. Deterministic serialization, so the same
    request always has the same fingerprint, in any process.
    """
    bound = payload
    if fields:
        bound = type(payload)()
        for field, _ in payload.ListFields():
            if field.name in fields:
                if field.is_repeated or field.message_type is not None:
                    getattr(bound, field.name).MergeFrom(getattr(payload, field.name))
                else:
                    setattr(bound, field.name, getattr(payload, field.name))
    digest = hashlib.sha256(action.encode())
    digest.update(b"\0")
    digest.update(bound.SerializeToString(deterministic=True))
    return digest.hexdigest()


class BarrierOutcome(Enum):
    APPLIED = "applied"
    REPLAYED = "replayed"
    NULL_COMPENSATION = "null"


@dataclass(frozen=True)
class Guarded:
    """What the barrier let through: the action's result, or its recorded rejection."""

    outcome: BarrierOutcome
    result: bytes = b""
    rejection: BusinessRejection | None = None


def _rows(conn: Connection, saga_id: str, step: str) -> dict[str, Row]:
    cursor = conn.execute(
        "SELECT phase, outcome, result, reason, message, fingerprint FROM barrier"
        " WHERE saga_id = ? AND step = ?",
        (saga_id, step),
    )
    return {row["phase"]: row for row in cursor}


def _matches(row: Row, fingerprint: str) -> bool:
    recorded: str | None = row["fingerprint"]
    return recorded is None or recorded == fingerprint  # NULL: a row from before fingerprints


def _record(
    conn: Connection,
    saga_id: str,
    step: str,
    phase: str,
    outcome: str,
    fingerprint: str,
    result: bytes = b"",
    rejection: BusinessRejection | None = None,
) -> None:
    conn.execute(
        "INSERT INTO barrier (saga_id, step, phase, outcome, result, reason, message, created_at,"
        " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            saga_id,
            step,
            phase,
            outcome,
            result,
            rejection.reason if rejection else None,
            rejection.message if rejection else None,
            utc_now().isoformat(),
            fingerprint,
        ),
    )


def expired(saga_id: str, horizon: datetime | None) -> bool:
    """Whether the saga was created before ``horizon`` (None: no horizon), by its id."""
    if horizon is None:
        return False
    created = saga_ids.created_at(saga_id)
    return created is not None and created < horizon


def guarded_execute(
    conn: Connection,
    saga_id: str,
    step: str,
    action: Callable[[], bytes],
    *,
    fingerprint: str,
    horizon: datetime | None = None,
) -> Guarded:
    """Run ``action`` once per (saga, step), inside the caller's transaction.

    A business rejection raised by ``action`` undoes whatever it wrote, is
    recorded, and is returned (not raised) so the transaction still commits.

    Raises:
        Aborted: the step was compensated (or a null compensation of this very
            request was recorded): a hanging request.
        RequestMismatch: the key holds a different request; nothing ran.
        SagaExpired: the saga was created before ``horizon`` and the step has no
            row here; nothing ran, nothing was recorded (see the module doc).
    """
    rows = _rows(conn, saga_id, step)
    if not rows and expired(saga_id, horizon):
        raise SagaExpired(
            f"saga {saga_id} is older than the barrier's retention window and step {step!r}"
            " never ran here; refused, nothing done"
        )
    marker = rows.get("compensate")
    if marker is not None:
        if "execute" in rows or _matches(marker, fingerprint):
            raise Aborted(f"step {step!r} of saga {saga_id} was compensated; execute refused")
        # A null compensation of another request: not this one's (see the module doc).
        conn.execute(
            "DELETE FROM barrier WHERE saga_id = ? AND step = ? AND phase = 'compensate'",
            (saga_id, step),
        )
    first = rows.get("execute")
    if first is not None:
        if not _matches(first, fingerprint):
            raise RequestMismatch(
                f"step {step!r} of saga {saga_id} already ran with a different request;"
                " refused, nothing done"
            )
        if first["outcome"] == "rejected":
            replayed = BusinessRejection(first["reason"], first["message"])
            return Guarded(BarrierOutcome.REPLAYED, rejection=replayed)
        return Guarded(BarrierOutcome.REPLAYED, result=first["result"])
    conn.execute("SAVEPOINT guarded_action")
    try:
        result = action()
    except BusinessRejection as rejection:
        conn.execute("ROLLBACK TO guarded_action")
        conn.execute("RELEASE guarded_action")
        _record(conn, saga_id, step, "execute", "rejected", fingerprint, rejection=rejection)
        return Guarded(BarrierOutcome.APPLIED, rejection=rejection)
    conn.execute("RELEASE guarded_action")
    _record(conn, saga_id, step, "execute", "applied", fingerprint, result=result)
    return Guarded(BarrierOutcome.APPLIED, result=result)


def guarded_compensate(
    conn: Connection,
    saga_id: str,
    step: str,
    compensation: Callable[[bytes], bytes],
    *,
    fingerprint: str,
    horizon: datetime | None = None,
) -> Guarded:
    """Undo the step's execute once, given its recorded result; a no-op if it never ran.

    ``fingerprint`` is the compensate request's, computed as its execute's would
    be (the execute's action, the same bound fields). A step with no row of a saga
    created before ``horizon`` is a null compensation that records nothing (its
    execute, if it ever comes, is refused by the same horizon).

    Raises:
        RequestMismatch: the execute that took effect was a different request;
            nothing is undone.
    """
    rows = _rows(conn, saga_id, step)
    if not rows and expired(saga_id, horizon):
        return Guarded(BarrierOutcome.NULL_COMPENSATION)
    if "compensate" in rows:
        return Guarded(BarrierOutcome.REPLAYED, result=rows["compensate"]["result"] or b"")
    first = rows.get("execute")
    if first is None or first["outcome"] == "rejected":
        _record(conn, saga_id, step, "compensate", "null", fingerprint)
        return Guarded(BarrierOutcome.NULL_COMPENSATION)
    if not _matches(first, fingerprint):
        raise RequestMismatch(
            f"step {step!r} of saga {saga_id} ran with a different request;"
            " compensation refused, nothing undone"
        )
    result = compensation(first["result"])
    _record(conn, saga_id, step, "compensate", "applied", fingerprint, result=result)
    return Guarded(BarrierOutcome.APPLIED, result=result)


def was_executed(conn: Connection, saga_id: str, step: str) -> bool:
    """Whether the step's execute took effect (applied, not rejected)."""
    first = _rows(conn, saga_id, step).get("execute")
    return first is not None and first["outcome"] == "applied"


def mark_finished(conn: Connection, saga_id_list: Iterable[str], at: datetime) -> int:
    """Note that these sagas finished for good (the coordinator said so), from ``at``;
    how many were new. Ids that carry no creation time are left alone: the horizon
    could not refuse their late duplicates, so their rows are kept."""
    marked = 0
    for saga_id in saga_id_list:
        if saga_ids.created_at(saga_id) is None:
            continue
        cursor = conn.execute(
            "INSERT INTO barrier_finished (saga_id, finished_at) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (saga_id, at.isoformat(timespec="microseconds")),
        )
        marked += cursor.rowcount
    return marked


def prune_finished(conn: Connection, finished_before: datetime, limit: int) -> int:
    """Delete every row of up to ``limit`` sagas that finished before ``finished_before``
    (each saga's rows in one statement); how many sagas."""
    sagas = [
        row[0]
        for row in conn.execute(
            "SELECT saga_id FROM barrier_finished WHERE finished_at < ?"
            " ORDER BY finished_at LIMIT ?",
            (finished_before.isoformat(timespec="microseconds"), limit),
        )
    ]
    if not sagas:
        return 0
    marks = ",".join("?" * len(sagas))
    conn.execute(f"DELETE FROM barrier WHERE saga_id IN ({marks})", sagas)
    conn.execute(f"DELETE FROM barrier_finished WHERE saga_id IN ({marks})", sagas)
    return len(sagas)
