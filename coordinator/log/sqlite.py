"""The saga log in one SQLite file (WAL, group commit): the adapter of :class:`SagaLog`.

Tables: ``sagas`` (one row each, the current state), ``steps``, ``attempts``
(projections updated in the same transaction as the change) and
``transitions``, the append-only history. Times are ISO-8601 UTC strings.
``sagas.told_at`` is when every participant of a finished saga was told it finished
(coordinator/engine/finished.py); only then, and after the retention window, may the saga
leave the log (:meth:`SqliteSagaLog.prune_finished`).
Reads of running sagas are served from memory by
:class:`coordinator.log.cache.RecordCache`: a saga a run drives here is read from the
run's own record, pinned there for the run's lifetime (:meth:`SqliteSagaLog.pin`; the
run owns it, and the cache keeps no copy), and other unfinished sagas once read from a
copy the cache keeps right, or drops. Every write still goes to the file.

Durable now, or soon (:meth:`SagaLog.append_later`): every write of a saga goes to the
file's one writer thread (common/store.py, group commit) through a task made when the
write is called, and tasks start in the order they were made, so writes reach the
writer in call order whether or not their caller waits. ``create``, ``append`` and
``append_many`` wait for their commit; ``append_later`` does not, unless a change
settles the saga. What it queued is committed with the next batch, ahead of anything
written after it; reads wait for it first, so a read sees every write called before it.
Its watchers are woken once it is on disk. A saga written later is dropped from the
record cache (its next read goes to the file, after the write) unless its run pinned it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from common.errors import NotFound
from common.store import Database
from contract.modes import SagaMode
from coordinator.log.cache import RecordCache
from coordinator.log.records import (
    TERMINAL,
    UNFINISHED,
    AttemptOutcome,
    AttemptRecord,
    Change,
    Kind,
    NewSaga,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
    Transition,
    apply,
    first_transition,
    new_record,
)
from coordinator.log.rows import attempt_from_row, filter_clauses, saga_from_row
from coordinator.log.saga_log import (
    EVERY_SAGA,
    Cursor,
    IdempotencyConflict,
    LiveRecord,
    SagaFilter,
    SagaLog,
    StatusConflict,
    settles,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sagas (
    saga_id         TEXT PRIMARY KEY,
    definition      TEXT NOT NULL,
    mode            TEXT NOT NULL,
    status          TEXT NOT NULL,
    direction       TEXT NOT NULL,
    data            BLOB NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash    TEXT NOT NULL DEFAULT '',
    failure_step    TEXT,
    failure_code    TEXT,
    failure_reason  TEXT,
    failure_message TEXT,
    round           INTEGER NOT NULL DEFAULT 0,
    trace_id        TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    finished_at     TEXT,
    deadline        TEXT NOT NULL,
    last_seq        INTEGER NOT NULL,
    told_at         TEXT
);
CREATE INDEX IF NOT EXISTS sagas_by_time ON sagas (created_at, saga_id);
CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, created_at, saga_id);
CREATE TABLE IF NOT EXISTS steps (
    saga_id  TEXT NOT NULL REFERENCES sagas (saga_id),
    position INTEGER NOT NULL,
    name     TEXT NOT NULL,
    status   TEXT NOT NULL,
    result   BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (saga_id, name)
);
CREATE TABLE IF NOT EXISTS attempts (
    saga_id       TEXT NOT NULL,
    step          TEXT NOT NULL,
    phase         TEXT NOT NULL,
    number        INTEGER NOT NULL,
    round         INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    outcome       TEXT,
    error_code    TEXT,
    error_reason  TEXT,
    error_message TEXT,
    PRIMARY KEY (saga_id, step, phase, number)
);
CREATE TABLE IF NOT EXISTS transitions (
    saga_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    step    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at      TEXT NOT NULL,
    status  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a log made before retention up to date (idempotent): the ``told_at`` column
    and the indexes that find finished sagas."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(sagas)")}
    if "told_at" not in columns:
        conn.execute("ALTER TABLE sagas ADD COLUMN told_at TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS sagas_untold ON sagas (finished_at)"
        " WHERE finished_at IS NOT NULL AND told_at IS NULL"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS sagas_told ON sagas (finished_at) WHERE told_at IS NOT NULL"
    )


def _iso(value: datetime) -> str:
    # Fixed width, so ISO strings sort like the times they stand for.
    return value.isoformat(timespec="microseconds")


# The SQL filter for a running or compensating saga, and its parameters.
_IS_UNFINISHED = f"status IN ({', '.join('?' for _ in UNFINISHED)})"
_UNFINISHED_VALUES = [s.value for s in UNFINISHED]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class SqliteSagaLog(SagaLog):
    """The saga log in ``path``; see the module docstring."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        super().__init__()
        self.db = Database(path, SCHEMA, synchronous=synchronous)
        self._cache = RecordCache()
        # Writes in flight (held, so no task is collected), the last one queued by
        # append_later (reads wait for it), and a saga whose later write failed.
        self._writing: set[asyncio.Task[object]] = set()
        self._last_later: asyncio.Task[list[Transition]] | None = None
        self._failed: dict[str, BaseException] = {}
        # Writes whose caller waited for the disk (the rest were written later).
        self.waited = 0

    async def open(self) -> None:
        await self.db.open()
        await self.db.transaction(_migrate)

    async def close(self) -> None:
        if self._writing:  # the writer commits them before it stops; their callbacks run
            await asyncio.wait(self._writing)
        await self.db.close()

    def _submit(self, work: Callable[[sqlite3.Connection], _T]) -> asyncio.Task[_T]:
        """Queue a write of a saga behind every one submitted before (module docstring)."""
        task = asyncio.ensure_future(self.db.transaction(work))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        return task

    async def _durable(self, saga_id: str, work: Callable[[sqlite3.Connection], _T], n: int) -> _T:
        """Write now: after what was queued before, returning once it is committed."""
        failed = self._failed.pop(saga_id, None)
        if failed is not None:
            raise failed
        written = self._submit(work)
        self.handed(n)
        self.waited += 1
        return await written

    async def _reads_after_writes(self) -> None:
        """Let what append_later queued reach the file before a read (it is the last
        write queued of those not waited for; writes commit in order)."""
        last = self._last_later
        if last is not None and not last.done():
            await asyncio.wait([last])

    async def create(self, new: NewSaga, then: Sequence[Change] = ()) -> tuple[SagaRecord, bool]:
        existing_id, created = await self._durable(
            new.saga_id, lambda conn: _create(conn, new, then), 1 + len(then)
        )
        if created:
            record = new_record(new)
            self._notify(new.saga_id, record.status)
            for change in then:
                record, transition = apply(record, change)
                self._notify(new.saga_id, transition.status)
            if record.mode == SagaMode.CHOREOGRAPHY.value:
                # Read back after each of its run's writes and on each event observed.
                self._cache.created(record)
            return record, True
        existing = await self.load(existing_id)
        if existing is None:
            # Retention removed it between the two reads (the key is that old): the key
            # is free again.
            return await self.create(new, then)
        return existing, False

    async def find(self, idempotency_key: str, request_hash: str) -> SagaRecord | None:
        if not idempotency_key:
            return None
        saga_id = await self.db.read(lambda conn: _keyed(conn, idempotency_key, request_hash))
        return None if saga_id is None else await self.load(saga_id)

    async def append(self, saga_id: str, change: Change) -> Transition:
        transition = await self._durable(saga_id, lambda conn: _append(conn, saga_id, change), 1)
        self._cache.written(saga_id, (change,), (transition,))
        self._notify(saga_id, transition.status)
        return transition

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        transitions = await self._durable(
            saga_id, lambda conn: [_append(conn, saga_id, c) for c in changes], len(changes)
        )
        self._cache.written(saga_id, changes, transitions, planned)
        for transition in transitions:
            self._notify(saga_id, transition.status)
        return transitions

    async def append_later(self, saga_id: str, changes: Sequence[Change]) -> None:
        if any(settles(change) for change in changes):
            await self.append_many(saga_id, changes)
            return
        failed = self._failed.pop(saga_id, None)
        if failed is not None:
            raise failed
        written = self._submit(lambda conn: [_append(conn, saga_id, c) for c in changes])
        self._last_later = written
        self._cache.forget(saga_id)
        written.add_done_callback(partial(self._written_later, saga_id))
        self.handed(len(changes))

    def _written_later(self, saga_id: str, written: asyncio.Task[list[Transition]]) -> None:
        if self._last_later is written:
            self._last_later = None
        if written.cancelled():  # the loop is closing under it: the writer still commits it
            return
        error = written.exception()
        if error is not None:
            log.error("saga log write failed saga_id=%s error=%r", saga_id, error)
            self._failed[saga_id] = error
            self._cache.forget(saga_id)
            return
        for transition in written.result():
            self._notify(saga_id, transition.status)

    @contextmanager
    def pin(self, live: LiveRecord) -> Iterator[None]:
        with self._cache.pinned(live):
            yield

    async def load(self, saga_id: str) -> SagaRecord | None:
        cached = self._cache.get(saga_id)
        if cached is not None:
            return cached
        await self._reads_after_writes()
        with self._cache.reading(saga_id) as keep:
            record = await self.db.read(lambda conn: _load(conn, saga_id))
            if record is not None:
                keep(record)
        return record

    async def load_unfinished(self) -> list[SagaRecord]:
        await self._reads_after_writes()
        with self._cache.reading_many() as keep:
            records = await self.db.read(_load_unfinished)
            keep(records)
        return records

    async def list_sagas(
        self,
        status: SagaStatus | None,
        before: Cursor | None,
        limit: int,
        where: SagaFilter = EVERY_SAGA,
    ) -> list[SagaRecord]:
        await self._reads_after_writes()
        return await self.db.read(lambda conn: _list(conn, status, before, limit, where))

    async def count_sagas(self, where: SagaFilter = EVERY_SAGA) -> dict[SagaStatus, int]:
        await self._reads_after_writes()
        return await self.db.read(lambda conn: _count(conn, where))

    async def history(self, saga_id: str, after_seq: int = 0) -> list[Transition]:
        await self._reads_after_writes()
        return await self.db.read(lambda conn: _history(conn, saga_id, after_seq))

    async def finished_untold(self, limit: int) -> list[tuple[str, str]]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT saga_id, definition FROM sagas"
                " WHERE finished_at IS NOT NULL AND told_at IS NULL"
                " ORDER BY finished_at LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [(row["saga_id"], row["definition"]) for row in rows]

    async def mark_told(self, saga_ids: Sequence[str]) -> None:
        at = _iso(datetime.now(UTC))
        await self.db.transaction(
            lambda conn: conn.executemany(
                "UPDATE sagas SET told_at = ? WHERE saga_id = ?", [(at, s) for s in saga_ids]
            )
        )

    async def prune_finished(self, finished_before: datetime, limit: int) -> int:
        cutoff = _iso(finished_before.astimezone(UTC))
        # Found by a read first: a pass with nothing to remove takes no write lock. Only
        # finished sagas go, and the record cache holds running ones only.
        found = await self.db.read(lambda conn: _prunable(conn, cutoff, limit))
        if not found:
            return 0
        return await self.db.transaction(lambda conn: _prune(conn, found, cutoff))

    async def unfinished(self) -> list[str]:
        await self._reads_after_writes()
        rows = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT saga_id FROM sagas WHERE {_IS_UNFINISHED} ORDER BY created_at, saga_id",
                _UNFINISHED_VALUES,
            ).fetchall()
        )
        return [row["saga_id"] for row in rows]

    async def overdue(self, mode: str, now: datetime) -> list[str]:
        await self._reads_after_writes()
        rows = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT saga_id FROM sagas WHERE {_IS_UNFINISHED} AND mode = ?"
                " AND deadline <= ? ORDER BY created_at, saga_id",
                [*_UNFINISHED_VALUES, mode, _iso(now.astimezone(UTC))],
            ).fetchall()
        )
        return [row["saga_id"] for row in rows]


def _keyed(conn: sqlite3.Connection, key: str, request_hash: str) -> str | None:
    """The saga ``key`` started, if any; IdempotencyConflict if for another request."""
    row = conn.execute(
        "SELECT saga_id, request_hash FROM sagas WHERE idempotency_key = ?", (key,)
    ).fetchone()
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise IdempotencyConflict(key)
    return str(row["saga_id"])


def _create(conn: sqlite3.Connection, new: NewSaga, then: Sequence[Change]) -> tuple[str, bool]:
    if new.idempotency_key:
        existing = _keyed(conn, new.idempotency_key, new.request_hash)
        if existing is not None:
            return existing, False
    record = new_record(new)
    created = _iso(record.created_at)
    conn.execute(
        "INSERT INTO sagas (saga_id, definition, mode, status, direction, data, idempotency_key,"
        " request_hash, trace_id, created_at, updated_at, deadline, last_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        (
            record.saga_id,
            record.definition,
            record.mode,
            record.status.value,
            record.direction.value,
            record.data,
            record.idempotency_key or None,
            record.request_hash,
            record.trace_id,
            created,
            created,
            _iso(record.deadline),
        ),
    )
    conn.executemany(
        "INSERT INTO steps (saga_id, position, name, status) VALUES (?, ?, ?, ?)",
        [(record.saga_id, i, s.name, s.status.value) for i, s in enumerate(record.steps)],
    )
    _insert_transition(conn, first_transition(record))
    for change in then:
        _append(conn, record.saga_id, change)
    return record.saga_id, True


def _insert_transition(conn: sqlite3.Connection, t: Transition) -> None:
    conn.execute(
        "INSERT INTO transitions (saga_id, seq, kind, step, attempt, at, status, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (t.saga_id, t.seq, t.kind.value, t.step, t.attempt, _iso(t.at), t.status.value, t.detail),
    )


def _append(conn: sqlite3.Connection, saga_id: str, change: Change) -> Transition:
    row = conn.execute(
        "SELECT status, last_seq, round FROM sagas WHERE saga_id = ?", (saga_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no saga {saga_id}")
    current = SagaStatus(row["status"])
    if change.require_status is not None and current not in change.require_status:
        raise StatusConflict(saga_id, current, change.require_status)
    at = _iso(change.at)
    if change.interrupt_open_attempts:
        conn.execute(
            "UPDATE attempts SET outcome = ?, finished_at = ?"
            " WHERE saga_id = ? AND outcome IS NULL",
            (AttemptOutcome.INTERRUPTED.value, at, saga_id),
        )
    moved = change.attempt
    if moved is not None and moved.outcome is None:
        conn.execute(
            "INSERT INTO attempts (saga_id, step, phase, number, round, started_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (saga_id, change.step, moved.phase.value, moved.number, row["round"], at),
        )
    elif moved is not None:
        error = moved.error
        conn.execute(
            "UPDATE attempts SET finished_at = ?, outcome = ?, error_code = ?, error_reason = ?,"
            " error_message = ? WHERE saga_id = ? AND step = ? AND phase = ? AND number = ?",
            (
                at,
                moved.outcome.value if moved.outcome else None,
                error.code if error else None,
                error.reason if error else None,
                error.message if error else None,
                saga_id,
                change.step,
                moved.phase.value,
                moved.number,
            ),
        )
    if change.step and (change.step_status is not None or change.result is not None):
        conn.execute(
            "UPDATE steps SET status = COALESCE(?, status), result = COALESCE(?, result)"
            " WHERE saga_id = ? AND name = ?",
            (
                change.step_status.value if change.step_status else None,
                change.result,
                saga_id,
                change.step,
            ),
        )
    status = change.saga_status or current
    seq = int(row["last_seq"]) + 1
    failure = change.failure
    if (
        change.direction is not None
        or failure is not None
        or change.next_round
        or status in TERMINAL
    ):
        conn.execute(
            "UPDATE sagas SET status = ?, direction = COALESCE(?, direction),"
            " failure_step = COALESCE(?, failure_step), failure_code = COALESCE(?, failure_code),"
            " failure_reason = COALESCE(?, failure_reason),"
            " failure_message = COALESCE(?, failure_message),"
            " round = round + ?, updated_at = ?,"
            " finished_at = CASE WHEN ? THEN ? ELSE finished_at END,"
            " last_seq = ? WHERE saga_id = ?",
            (
                status.value,
                change.direction.value if change.direction else None,
                failure.step if failure else None,
                failure.code if failure else None,
                failure.reason if failure else None,
                failure.message if failure else None,
                1 if change.next_round else 0,
                at,
                status in TERMINAL,
                at,
                seq,
                saga_id,
            ),
        )
    else:
        # Most changes (a step's attempts) touch only these columns.
        conn.execute(
            "UPDATE sagas SET status = ?, updated_at = ?, last_seq = ? WHERE saga_id = ?",
            (status.value, at, seq, saga_id),
        )
    transition = Transition(
        saga_id=saga_id,
        seq=seq,
        kind=change.kind,
        at=change.at,
        status=status,
        step=change.step,
        attempt=moved.number if moved else 0,
        detail=change.detail,
    )
    _insert_transition(conn, transition)
    return transition


def _steps(steps: Sequence[sqlite3.Row], attempts: Sequence[sqlite3.Row]) -> tuple[StepRecord, ...]:
    """One saga's steps (rows in position order) with their attempts (in rowid order)."""
    by_step: dict[str, list[AttemptRecord]] = {}
    for a in attempts:
        by_step.setdefault(a["step"], []).append(attempt_from_row(a, _time))
    return tuple(
        StepRecord(
            name=s["name"],
            status=StepStatus(s["status"]),
            result=s["result"],
            attempts=tuple(by_step.get(s["name"], ())),
        )
        for s in steps
    )


def _load(conn: sqlite3.Connection, saga_id: str) -> SagaRecord | None:
    row = conn.execute("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
    if row is None:
        return None
    attempts = conn.execute(
        "SELECT * FROM attempts WHERE saga_id = ? ORDER BY rowid", (saga_id,)
    ).fetchall()
    steps = conn.execute(
        "SELECT saga_id, name, status, result FROM steps WHERE saga_id = ? ORDER BY position",
        (saga_id,),
    ).fetchall()
    return saga_from_row(row, _steps(steps, attempts), _time)


def _load_unfinished(conn: sqlite3.Connection) -> list[SagaRecord]:
    """Every unfinished saga in three queries, not three per saga."""
    unfinished = f"SELECT saga_id FROM sagas WHERE {_IS_UNFINISHED}"
    rows = conn.execute(
        f"SELECT * FROM sagas WHERE {_IS_UNFINISHED} ORDER BY created_at, saga_id",
        _UNFINISHED_VALUES,
    ).fetchall()
    attempts: dict[str, list[sqlite3.Row]] = {}
    for a in conn.execute(
        f"SELECT * FROM attempts WHERE saga_id IN ({unfinished}) ORDER BY rowid", _UNFINISHED_VALUES
    ):
        attempts.setdefault(a["saga_id"], []).append(a)
    steps: dict[str, list[sqlite3.Row]] = {}
    for s in conn.execute(
        "SELECT saga_id, name, status, result FROM steps"
        f" WHERE saga_id IN ({unfinished}) ORDER BY saga_id, position",
        _UNFINISHED_VALUES,
    ):
        steps.setdefault(s["saga_id"], []).append(s)
    return [
        saga_from_row(
            row, _steps(steps.get(row["saga_id"], []), attempts.get(row["saga_id"], [])), _time
        )
        for row in rows
    ]


def _count(conn: sqlite3.Connection, where: SagaFilter) -> dict[SagaStatus, int]:
    clauses, args = filter_clauses(where, "?", _iso)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT status, COUNT(*) FROM sagas {condition} GROUP BY status", args
    ).fetchall()
    return {SagaStatus(row[0]): int(row[1]) for row in rows}


def _list(
    conn: sqlite3.Connection,
    status: SagaStatus | None,
    before: Cursor | None,
    limit: int,
    where: SagaFilter = EVERY_SAGA,
) -> list[SagaRecord]:
    clauses, args = filter_clauses(where, "?", _iso)
    if status is not None:
        clauses.append("status = ?")
        args.append(status.value)
    if before is not None:
        clauses.append("(created_at, saga_id) < (?, ?)")
        args.extend([_iso(before[0]), before[1]])
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT * FROM sagas {condition} ORDER BY created_at DESC, saga_id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    # Their steps too (without attempts): the results they filled in (a total, a
    # charge id) make the saga's summary.
    steps: dict[str, list[sqlite3.Row]] = {}
    if rows:
        marks = ",".join("?" * len(rows))
        for s in conn.execute(
            "SELECT saga_id, name, status, result FROM steps"
            f" WHERE saga_id IN ({marks}) ORDER BY saga_id, position",
            [row["saga_id"] for row in rows],
        ):
            steps.setdefault(s["saga_id"], []).append(s)
    return [saga_from_row(row, _steps(steps.get(row["saga_id"], []), ()), _time) for row in rows]


_PRUNABLE = "told_at IS NOT NULL AND finished_at < ?"


def _prunable(conn: sqlite3.Connection, cutoff: str, limit: int) -> list[str]:
    """Up to ``limit`` told sagas finished before ``cutoff``, oldest first."""
    return [
        row[0]
        for row in conn.execute(
            f"SELECT saga_id FROM sagas WHERE {_PRUNABLE} ORDER BY finished_at LIMIT ?",
            (cutoff, limit),
        )
    ]


def _prune(conn: sqlite3.Connection, sagas: Sequence[str], cutoff: str) -> int:
    """Delete these sagas with all their rows (those still prunable: checked again)."""
    marks = ",".join("?" * len(sagas))
    kept = [
        row[0]
        for row in conn.execute(
            f"SELECT saga_id FROM sagas WHERE saga_id IN ({marks}) AND {_PRUNABLE}",
            [*sagas, cutoff],
        )
    ]
    if kept:
        marks = ",".join("?" * len(kept))
        for table in ("transitions", "attempts", "steps", "sagas"):
            conn.execute(f"DELETE FROM {table} WHERE saga_id IN ({marks})", kept)
    return len(kept)


def _history(conn: sqlite3.Connection, saga_id: str, after_seq: int) -> list[Transition]:
    rows = conn.execute(
        "SELECT * FROM transitions WHERE saga_id = ? AND seq > ? ORDER BY seq",
        (saga_id, after_seq),
    ).fetchall()
    return [
        Transition(
            saga_id=r["saga_id"],
            seq=r["seq"],
            kind=Kind(r["kind"]),
            at=datetime.fromisoformat(r["at"]),
            status=SagaStatus(r["status"]),
            step=r["step"],
            attempt=r["attempt"],
            detail=r["detail"],
        )
        for r in rows
    ]
