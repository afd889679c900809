"""The saga log on PostgreSQL, shared by coordinator replicas: an adapter of :class:`SagaLog`.

Selected by ``SAGAWIRE_SAGA_LOG=postgresql://...``; the tables live in one schema
(``SAGAWIRE_SAGA_LOG_SCHEMA``), created and migrated at start
(coordinator/log/postgres_migrations.py).

**Leases and fencing.** Each unfinished saga is driven by one replica at a time: the one
whose lease it is (``sagas.owner``, ``lease_until``), with a fencing token
(``sagas.fence``) that grows by one at every take-over. A replica remembers the token of
each lease it holds, and every write of such a saga checks it under the saga row's lock:
a replica that lost the lease (it was paused or cut off past ``lease_until`` and another
took the saga over) has its write refused with :class:`LeaseLost` and stops driving the
saga. A write by a replica that holds no lease on the saga takes it in the same
transaction if it is free or expired (``RetrySaga`` on any replica), and is refused
(:class:`OwnedElsewhere`, UNAVAILABLE) if another replica's lease is live. Writes the
choreography observer makes (inside :meth:`SagaLog.as_observer`) are fenced by the
observer's own lease instead (table ``leases``): one replica observes at a time. Leases
are renewed in batches (:meth:`PostgresSagaLog.renew_leases`) and by every write of their
saga; lease times are the database's clock, so replicas' clocks never race. Each
transition keeps its writer and the token it was written under.

**Group commit.** Writes go to a lane (a saga always to the same one, so its writes stay
in order); a lane is one connection that takes every write waiting, checks them all
against the sagas' rows (one ``SELECT ... FOR UPDATE``), and sends all their statements
in one pipeline, one transaction, one commit, then answers the callers. A refused write
(not found, a required status, a lost lease) is decided before anything is sent and
fails alone. One lane by default: measured here, more lanes make smaller batches, so
more commits (fsyncs) for the same writes; 64 sagas at once wrote as fast through one
lane as through four, and 8 sagas at once twice as fast.

**Notifications.** Each commit sends one ``NOTIFY`` listing the sagas it changed; every
replica listens and wakes its own ``WatchSaga`` streams and ``PlaceOrder(wait)`` calls, so
a saga driven by one replica is watched live on any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from opentelemetry import metrics as otel_metrics
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from common.errors import NotFound
from common.telemetry import INSTRUMENTATION_NAME
from coordinator.log.postgres_migrations import MIGRATIONS, Migration, migrate
from coordinator.log.records import (
    TERMINAL,
    UNFINISHED,
    AttemptOutcome,
    AttemptRecord,
    Change,
    Direction,
    Failure,
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
    LeaseLost,
    OwnedElsewhere,
    SagaFilter,
    SagaLog,
    StatusConflict,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]
# What a create found: (saga id, created now), or a different request under its key.
_Found = tuple[str, bool] | IdempotencyConflict

OBSERVER_ROLE = "observer"
# Who is writing, when it is not a saga's driver (see as_observer).
_WRITING_AS: ContextVar[str] = ContextVar("sagawire_saga_log_role", default="")

_UNFINISHED_VALUES = [s.value for s in UNFINISHED]
# A NOTIFY payload must stay under 8000 bytes.
_NOTIFY_BYTES = 7000


def default_replica_id() -> str:
    """This process's name as a lease owner: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class _Write:
    """A create (``new`` set) or an append of ``changes``, waiting for its lane."""

    saga_id: str
    changes: Sequence[Change]
    new: NewSaga | None
    role: str
    future: asyncio.Future[Any]


@dataclass
class _Header:
    """A saga's row as a batch sees it: what the checks need and what the batch writes."""

    status: SagaStatus
    last_seq: int
    round: int
    owner: str | None
    fence: int
    expired: bool
    renew: bool = False
    direction: Direction | None = None
    failure: Failure | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class _Batch:
    """What one lane's transaction writes, built before anything is sent."""

    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    headers: dict[str, _Header] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    # (saga id, status) of every transition, in order: who to wake after the commit.
    heard: list[tuple[str, SagaStatus]] = field(default_factory=list)


_INSERT_SAGA = (
    "INSERT INTO sagas (saga_id, definition, mode, status, direction, data, idempotency_key,"
    " request_hash, trace_id, created_at, updated_at, deadline, last_seq, owner, fence,"
    " lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, 1,"
    " now() + make_interval(secs => %s))"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING saga_id"
)
_UPDATE_SAGA = (
    "UPDATE sagas SET status = %s, direction = COALESCE(%s, direction),"
    " failure_step = COALESCE(%s, failure_step), failure_code = COALESCE(%s, failure_code),"
    " failure_reason = COALESCE(%s, failure_reason),"
    " failure_message = COALESCE(%s, failure_message), round = %s, updated_at = %s,"
    " finished_at = COALESCE(%s, finished_at), last_seq = %s, owner = %s, fence = %s,"
    " lease_until = CASE WHEN %s THEN now() + make_interval(secs => %s) ELSE lease_until END"
    " WHERE saga_id = %s"
)
_LOCK_HEADERS = (
    "SELECT saga_id, status, last_seq, round, owner, fence,"
    " (lease_until IS NULL OR lease_until < now()) AS expired"
    " FROM sagas WHERE saga_id = ANY(%s) ORDER BY saga_id FOR UPDATE"
)
_ROLE_ROW = "SELECT owner, fence FROM leases WHERE name = %s FOR SHARE"
_INSERT_TRANSITION = (
    "INSERT INTO transitions (saga_id, seq, kind, step, attempt, at, status, detail, writer,"
    " fence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_STEP = "INSERT INTO steps (saga_id, position, name, status) VALUES (%s, %s, %s, %s)"
_INTERRUPT = (
    "UPDATE attempts SET outcome = %s, finished_at = %s WHERE saga_id = %s AND outcome IS NULL"
)
_START_ATTEMPT = (
    "INSERT INTO attempts (saga_id, step, phase, number, round, started_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
_END_ATTEMPT = (
    "UPDATE attempts SET finished_at = %s, outcome = %s, error_code = %s, error_reason = %s,"
    " error_message = %s WHERE saga_id = %s AND step = %s AND phase = %s AND number = %s"
)
_UPDATE_STEP = (
    "UPDATE steps SET status = COALESCE(%s, status), result = COALESCE(%s, result)"
    " WHERE saga_id = %s AND name = %s"
)


class PostgresSagaLog(SagaLog):
    """The saga log in one PostgreSQL schema, shared by every replica; see the module doc."""

    shared = True

    def __init__(
        self,
        dsn: str,
        schema: str = "sagawire",
        replica: str = "",
        lease_seconds: float = 10.0,
        lanes: int = 1,
        max_batch: int = 256,
        pool_size: int = 4,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.replica = replica or default_replica_id()
        self.lease_seconds = lease_seconds
        self._options = f"-c search_path={schema} -c timezone=UTC"
        self._migrations = migrations
        self._pool: AsyncConnectionPool[AsyncConnection[Row]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            connection_class=AsyncConnection[Row],
            kwargs={"options": self._options, "autocommit": True, "row_factory": dict_row},
            open=False,
            name=f"saga-log-{schema}",
        )
        self._channel = f"sagawire.{schema}"
        self._queues: list[asyncio.Queue[_Write | None]] = [asyncio.Queue() for _ in range(lanes)]
        self._max_batch = max_batch
        self._tasks: list[asyncio.Task[None]] = []
        # Leases this replica holds: saga id -> fencing token; roles likewise.
        self._held: dict[str, int] = {}
        self._roles: dict[str, int] = {}
        # Leases given up since the last renewal pass: saga id -> (token, let others take it).
        self._releasing: dict[str, tuple[int, bool]] = {}
        self._lost_callbacks: list[Callable[[str], None]] = []
        self.refused = 0  # writes refused because their lease was lost
        # What leases did, for dashboards: writes refused, leases found lost, sagas taken over.
        self._lease_events = otel_metrics.get_meter(INSTRUMENTATION_NAME).create_counter(
            "sagawire.saga_log.lease_events",
            description="Saga leases: writes refused (lost lease), leases lost, sagas taken over",
        )
        self.batches = 0
        self.writes = 0

    # -- life ------------------------------------------------------------------------

    async def open(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, options=self._options
        ) as conn:
            applied = await migrate(conn, self.schema, self._migrations)
        if applied:
            log.info("saga log migrated schema=%s versions=%s", self.schema, applied)
        await self._pool.open(wait=True)
        listening = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run_lane(queue), name=f"saga-log-lane-{i}")
            for i, queue in enumerate(self._queues)
        ]
        self._tasks.append(asyncio.create_task(self._listen(listening), name="saga-log-listen"))
        await listening.wait()
        log.info("saga log on PostgreSQL schema=%s replica=%s", self.schema, self.replica)

    async def close(self) -> None:
        """Finish queued writes, hand every lease back (expired, so others take the sagas
        at once), close the connections. Idempotent."""
        if not self._tasks:
            return
        for queue in self._queues:
            queue.put_nowait(None)
        lanes, others = self._tasks[: len(self._queues)], self._tasks[len(self._queues) :]
        await asyncio.gather(*lanes, return_exceptions=True)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(psycopg.Error):
            for saga_id, fence in self._held.items():
                self._releasing[saga_id] = (fence, True)
            self._held.clear()
            await self._flush_releases()
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE leases SET until = now() WHERE owner = %s", (self.replica,)
                )
            self._roles.clear()
        await self._pool.close()

    # -- writes ----------------------------------------------------------------------

    async def create(self, new: NewSaga, then: Sequence[Change] = ()) -> tuple[SagaRecord, bool]:
        existing_id, created = await self._write(new.saga_id, then, new)
        if created:
            record = new_record(new)
            for change in then:
                record, _ = apply(record, change)
            return record, True
        existing = await self.load(existing_id)
        if existing is None:  # pruned in between: the key is free again
            return await self.create(new, then)
        return existing, False

    async def find(self, idempotency_key: str, request_hash: str) -> SagaRecord | None:
        if not idempotency_key:
            return None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT saga_id, request_hash FROM sagas WHERE idempotency_key = %s",
                (idempotency_key,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyConflict(idempotency_key)
        return await self.load(str(row["saga_id"]))

    async def append(self, saga_id: str, change: Change) -> Transition:
        transitions: list[Transition] = await self._write(saga_id, (change,), None)
        return transitions[0]

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        if not changes:
            if await self._exists(saga_id):
                return []
            raise NotFound(f"no saga {saga_id}")
        written: list[Transition] = await self._write(saga_id, changes, None)
        return written

    @contextlib.contextmanager
    def as_observer(self) -> Iterator[None]:
        token = _WRITING_AS.set(OBSERVER_ROLE)
        try:
            yield
        finally:
            _WRITING_AS.reset(token)

    async def _write(self, saga_id: str, changes: Sequence[Change], new: NewSaga | None) -> Any:
        if not self._tasks:
            raise RuntimeError(f"saga log schema {self.schema} is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane = zlib.crc32(saga_id.encode()) % len(self._queues)
        self._queues[lane].put_nowait(_Write(saga_id, changes, new, _WRITING_AS.get(), future))
        return await future

    async def _run_lane(self, queue: asyncio.Queue[_Write | None]) -> None:
        conn: AsyncConnection[Row] | None = None
        try:
            while True:
                first = await queue.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < self._max_batch and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        queue.put_nowait(None)  # stop after this batch
                        break
                    batch.append(item)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.dsn, autocommit=True, row_factory=dict_row, options=self._options
                        )
                    await self._commit(conn, batch)
                except Exception as failure:
                    log.exception("saga log group commit failed batch=%d", len(batch))
                    for write in batch:
                        if not write.future.done():
                            write.future.set_exception(failure)
                    if conn is not None and not conn.closed:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def _commit(self, conn: AsyncConnection[Row], batch: list[_Write]) -> None:
        """One transaction for the batch, in two round trips (three when a create meets a
        key already taken): open it, insert the new sagas and lock the others' rows; then
        every write, the notification and the commit. Refused writes are decided between
        the two, before anything of theirs is sent."""
        creates = [w for w in batch if w.new is not None]
        inserting = _first_of_each_key(creates)
        appended = sorted({w.saga_id for w in batch if w.new is None})
        check_role = OBSERVER_ROLE in self._roles and any(w.role == OBSERVER_ROLE for w in batch)
        inserts = conn.cursor()
        async with conn.pipeline():
            await conn.execute("BEGIN")
            if inserting:
                params = [
                    _saga_params(w.new, self.replica, self.lease_seconds)
                    for w in inserting
                    if w.new is not None
                ]
                await inserts.executemany(_INSERT_SAGA, params, returning=True)
            headers_found = await conn.execute(_LOCK_HEADERS, (appended,)) if appended else None
            role_found = await conn.execute(_ROLE_ROW, (OBSERVER_ROLE,)) if check_role else None
        inserted: set[str] = set()
        if inserting:
            while True:
                row = await inserts.fetchone()
                if row is not None:
                    inserted.add(row["saga_id"])
                if not inserts.nextset():
                    break
        headers = _headers(await headers_found.fetchall()) if headers_found else {}
        observer_ok = False
        if role_found is not None:
            row = await role_found.fetchone()
            observer_ok = row is not None and (row["owner"], row["fence"]) == (
                self.replica,
                self._roles.get(OBSERVER_ROLE),
            )
        found = await self._found(conn, creates, inserting, inserted)
        outcomes: list[tuple[_Write, Any, BaseException | None]] = []
        plan = _Batch()
        for write in batch:
            try:
                if write.new is not None:
                    value: Any = self._plan_create(write, found, plan)
                else:
                    value = self._plan_append(write, headers, observer_ok, plan)
            except (
                NotFound,
                StatusConflict,
                IdempotencyConflict,
                LeaseLost,
                OwnedElsewhere,
            ) as refused:
                outcomes.append((write, None, refused))
            else:
                outcomes.append((write, value, None))
        await self._send(conn, plan)
        self.batches += 1
        self.writes += len(batch)
        self._held.update(plan.claimed)
        for write, value, error in outcomes:
            if write.future.done():
                continue  # the caller was cancelled; the write happened anyway
            if error is not None:
                write.future.set_exception(error)
            else:
                write.future.set_result(value)
        for saga_id, status in plan.heard:
            self._notify(saga_id, status)

    async def _found(
        self,
        conn: AsyncConnection[Row],
        creates: list[_Write],
        inserting: list[_Write],
        inserted: set[str],
    ) -> dict[str, _Found]:
        """What each create found: (saga id, created now), the saga its key names (created
        earlier, or by an earlier create of the batch), or the conflict of a different
        request under that key. An empty id: the key's saga was pruned meanwhile."""
        taken = [
            w.new.idempotency_key
            for w in creates
            if w.new is not None and w.new.idempotency_key and w.saga_id not in inserted
        ]
        by_key: dict[str, Row] = {}
        if taken:
            cursor = await conn.execute(
                "SELECT saga_id, request_hash, idempotency_key FROM sagas"
                " WHERE idempotency_key = ANY(%s)",
                (taken,),
            )
            by_key = {row["idempotency_key"]: row for row in await cursor.fetchall()}
        firsts = {w.new.idempotency_key: w for w in inserting if w.new and w.new.idempotency_key}
        found: dict[str, _Found] = {}
        for write in creates:
            new = write.new
            assert new is not None
            if write.saga_id in inserted:
                found[write.saga_id] = (write.saga_id, True)
                continue
            row = by_key.get(new.idempotency_key)
            first = firsts.get(new.idempotency_key)
            if row is None and first is not None and first.new and first.saga_id in inserted:
                row = {"saga_id": first.saga_id, "request_hash": first.new.request_hash}
            if row is None:
                found[write.saga_id] = ("", False)  # pruned meanwhile: create() tries again
            elif row["request_hash"] != new.request_hash:
                found[write.saga_id] = IdempotencyConflict(new.idempotency_key)
            else:
                found[write.saga_id] = (str(row["saga_id"]), False)
        return found

    async def _role_is_ours(self, conn: AsyncConnection[Row], role: str) -> bool:
        cursor = await conn.execute(_ROLE_ROW, (role,))
        row = await cursor.fetchone()
        return row is not None and (row["owner"], row["fence"]) == (
            self.replica,
            self._roles.get(role),
        )

    def _plan_create(
        self, write: _Write, found: dict[str, _Found], plan: _Batch
    ) -> tuple[str, bool]:
        new = write.new
        assert new is not None
        outcome = found[write.saga_id]
        if isinstance(outcome, IdempotencyConflict):
            raise outcome
        saga_id, created = outcome
        if not created:
            return saga_id, False
        record = new_record(new)
        plan.steps.extend(
            (record.saga_id, i, s.name, s.status.value) for i, s in enumerate(record.steps)
        )
        first = first_transition(record)
        plan.transitions.append(_transition_params(first, self.replica, 1))
        plan.heard.append((record.saga_id, first.status))
        header = _Header(SagaStatus.RUNNING, 1, 0, self.replica, 1, False, renew=True)
        plan.claimed[record.saga_id] = 1
        if write.changes:
            self._plan_changes(record.saga_id, header, write.changes, plan)
        return record.saga_id, True

    def _plan_append(
        self, write: _Write, headers: dict[str, _Header], observer_ok: bool, plan: _Batch
    ) -> list[Transition]:
        saga_id = write.saga_id
        header = plan.headers.get(saga_id) or headers.get(saga_id)
        if header is None:
            raise NotFound(f"no saga {saga_id}")
        header = replace(header)
        held = plan.claimed.get(saga_id, self._held.get(saga_id))
        if held is not None:
            if (header.owner, header.fence) != (self.replica, held):
                self._lost(saga_id, f"owner {header.owner} token {header.fence}, ours {held}")
                raise LeaseLost(saga_id, header.owner or "")
            header.renew = True
        elif write.role == OBSERVER_ROLE:
            if not observer_ok:
                self.refused += 1
                self._lease_events.add(1, {"event": "refused"})
                log.warning("write refused: not the observer (lease lost) saga_id=%s", saga_id)
                raise LeaseLost(saga_id, "the observer")
        elif header.owner is None or header.expired or header.owner == self.replica:
            # Free, expired, or ours from before a restart: this write takes the lease.
            header.owner, header.fence, header.renew = self.replica, header.fence + 1, True
            transitions = self._plan_changes(saga_id, header, write.changes, plan)
            plan.claimed[saga_id] = header.fence
            return transitions
        else:
            raise OwnedElsewhere(saga_id, header.owner)
        return self._plan_changes(saga_id, header, write.changes, plan, write.role)

    def _plan_changes(
        self,
        saga_id: str,
        start: _Header,
        changes: Sequence[Change],
        plan: _Batch,
        role: str = "",
    ) -> list[Transition]:
        """Check and plan ``changes`` of one saga, all or none; its header is kept in the
        plan only if every one of them holds."""
        header = replace(start)
        statements: list[tuple[str, tuple[Any, ...]]] = []
        transitions: list[Transition] = []
        for change in changes:
            if change.require_status is not None and header.status not in change.require_status:
                raise StatusConflict(saga_id, header.status, change.require_status)
            statements.extend(_change_statements(saga_id, change, header.round))
            status = change.saga_status or header.status
            header.status = status
            header.last_seq += 1
            header.round += 1 if change.next_round else 0
            header.direction = change.direction or header.direction
            header.failure = change.failure or header.failure
            header.updated_at = change.at
            if status in TERMINAL:
                header.finished_at = change.at
            transitions.append(
                Transition(
                    saga_id=saga_id,
                    seq=header.last_seq,
                    kind=change.kind,
                    at=change.at,
                    status=status,
                    step=change.step,
                    attempt=change.attempt.number if change.attempt else 0,
                    detail=change.detail,
                )
            )
        plan.statements.extend(statements)
        # The observer's writes say so: they are not the saga's driver's.
        writer = self.replica if role != OBSERVER_ROLE else f"{self.replica}:observer"
        plan.transitions.extend(_transition_params(t, writer, header.fence) for t in transitions)
        plan.heard.extend((saga_id, t.status) for t in transitions)
        plan.headers[saga_id] = header
        return transitions

    async def _send(self, conn: AsyncConnection[Row], plan: _Batch) -> None:
        """Every statement of the batch, then one NOTIFY (it leaves with the commit), then
        the commit: one pipeline, one round trip."""
        headers = [
            _header_params(saga_id, h, self.lease_seconds)
            for saga_id, h in plan.headers.items()
            if h.updated_at is not None
        ]
        async with conn.pipeline(), conn.cursor() as cur:
            if plan.steps:
                await cur.executemany(_INSERT_STEP, plan.steps)
            for query, params in plan.statements:
                await cur.execute(query, params)
            if headers:
                await cur.executemany(_UPDATE_SAGA, headers)
            if plan.transitions:
                await cur.executemany(_INSERT_TRANSITION, plan.transitions)
            for payload in _payloads(self.replica, plan.heard):
                await cur.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))
            await cur.execute("COMMIT")

    def _lost(self, saga_id: str, why: str, refused: bool = True) -> None:
        """A write (``refused``) or a renewal found the lease of a saga this replica drove
        taken over: stop driving it."""
        self._held.pop(saga_id, None)
        if refused:
            self.refused += 1
            self._lease_events.add(1, {"event": "refused"})
            log.warning("write refused: lease lost saga_id=%s (%s)", saga_id, why)
        else:
            self._lease_events.add(1, {"event": "lost"})
            log.warning("lease lost saga_id=%s (%s)", saga_id, why)
        for callback in self._lost_callbacks:
            callback(saga_id)

    # -- leases ----------------------------------------------------------------------

    def holds(self, saga_id: str) -> bool:
        return saga_id in self._held

    def on_lease_lost(self, callback: Callable[[str], None]) -> None:
        self._lost_callbacks.append(callback)

    def release(self, saga_id: str, take_over: bool = False) -> None:
        fence = self._held.pop(saga_id, None)
        if fence is not None:
            self._releasing[saga_id] = (fence, take_over)

    async def renew_leases(self) -> list[str]:
        """Renew every lease held, in one statement; hand back released ones. Returns the
        sagas whose lease was lost (taken over meanwhile); their drivers are told."""
        await self._flush_releases()
        if not self._held:
            return []
        held = dict(self._held)
        async with self._pool.connection() as conn:
            # Rows locked in saga id order, as the lanes lock theirs: no deadlock with
            # another replica's observer writing some of these sagas.
            cursor = await conn.execute(
                "UPDATE sagas AS s SET lease_until = now() + make_interval(secs => %s)"
                " FROM (SELECT m.saga_id FROM sagas AS m"
                "  JOIN unnest(%s::text[], %s::bigint[]) AS h(saga_id, fence)"
                "  ON m.saga_id = h.saga_id AND m.fence = h.fence"
                "  WHERE m.owner = %s ORDER BY m.saga_id FOR UPDATE OF m) AS mine"
                " WHERE s.saga_id = mine.saga_id RETURNING s.saga_id",
                (self.lease_seconds, list(held), list(held.values()), self.replica),
            )
            renewed = {row["saga_id"] for row in await cursor.fetchall()}
        lost = [s for s in held if s not in renewed and self._held.get(s) == held[s]]
        for saga_id in lost:
            self._lost(saga_id, "not renewed: taken over or gone", refused=False)
        return lost

    async def _flush_releases(self) -> None:
        if not self._releasing:
            return
        releasing, self._releasing = self._releasing, {}
        ids = list(releasing)
        fences = [fence for fence, _ in releasing.values()]
        take_over = [flag for _, flag in releasing.values()]
        async with self._pool.connection() as conn:
            # Let others take it now (expired), or nobody (no owner: nothing to drive).
            await conn.execute(
                "UPDATE sagas AS s SET lease_until = CASE WHEN mine.take_over THEN now() END,"
                " owner = CASE WHEN mine.take_over THEN s.owner END"
                " FROM (SELECT m.saga_id, h.take_over FROM sagas AS m"
                "  JOIN unnest(%s::text[], %s::bigint[], %s::bool[])"
                "  AS h(saga_id, fence, take_over) ON m.saga_id = h.saga_id AND m.fence = h.fence"
                "  WHERE m.owner = %s ORDER BY m.saga_id FOR UPDATE OF m) AS mine"
                " WHERE s.saga_id = mine.saga_id",
                (ids, fences, take_over, self.replica),
            )

    async def claim_unfinished(self, limit: int | None = None) -> list[SagaRecord]:
        """Take over unfinished sagas whose lease expired (their replica died or was
        paused past it), and those this replica's name still owns (it restarted);
        oldest first, at most ``limit``. Returns them whole, to be resumed."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE sagas AS s SET owner = %s, fence = s.fence + 1,"
                " lease_until = now() + make_interval(secs => %s)"
                " FROM (SELECT saga_id FROM sagas WHERE status = ANY(%s) AND owner IS NOT NULL"
                "  AND (lease_until < now() OR (owner = %s AND NOT saga_id = ANY(%s)))"
                "  ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) AS free"
                " WHERE s.saga_id = free.saga_id RETURNING s.saga_id, s.fence, s.created_at",
                (
                    self.replica,
                    self.lease_seconds,
                    _UNFINISHED_VALUES,
                    self.replica,
                    list(self._held) + list(self._releasing),
                    limit,
                ),
            )
            claimed = sorted(await cursor.fetchall(), key=lambda r: (r["created_at"], r["saga_id"]))
        if not claimed:
            return []
        for row in claimed:
            self._held[row["saga_id"]] = row["fence"]
        self._lease_events.add(len(claimed), {"event": "taken_over"})
        log.info("took over sagas count=%d replica=%s", len(claimed), self.replica)
        records = await self._load_many([row["saga_id"] for row in claimed])
        return [records[row["saga_id"]] for row in claimed if row["saga_id"] in records]

    async def hold_role(self, role: str) -> bool:
        """Take or renew the lease of a role only one replica plays (the observer):
        taken if free or expired; True while this replica holds it."""
        held = self._roles.get(role)
        async with self._pool.connection() as conn:
            if held is not None:
                cursor = await conn.execute(
                    "UPDATE leases SET until = now() + make_interval(secs => %s)"
                    " WHERE name = %s AND owner = %s AND fence = %s RETURNING fence",
                    (self.lease_seconds, role, self.replica, held),
                )
            else:
                cursor = await conn.execute(
                    "INSERT INTO leases (name, owner, fence, until)"
                    " VALUES (%s, %s, 1, now() + make_interval(secs => %s))"
                    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                    " fence = leases.fence + 1, until = excluded.until"
                    " WHERE leases.until < now() OR leases.owner = excluded.owner"
                    " RETURNING fence",
                    (role, self.replica, self.lease_seconds),
                )
            row = await cursor.fetchone()
        if row is None:
            if held is not None:
                log.warning("role lease lost role=%s replica=%s", role, self.replica)
            self._roles.pop(role, None)
            return False
        if held is None:
            log.info("role taken role=%s replica=%s token=%d", role, self.replica, row["fence"])
        self._roles[role] = row["fence"]
        return True

    async def drop_role(self, role: str) -> None:
        """Give a role up now (shutdown): another replica takes it without waiting."""
        fence = self._roles.pop(role, None)
        if fence is not None:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE leases SET until = now() WHERE name = %s AND owner = %s AND fence = %s",
                    (role, self.replica, fence),
                )

    async def observer_offset(self, producer: str) -> int:
        """The next sequence the observer wants from ``producer``."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT sequence FROM observer_offsets WHERE producer = %s", (producer,)
            )
            row = await cursor.fetchone()
        return int(row["sequence"]) + 1 if row else 1

    async def save_observer_offset(self, producer: str, sequence: int) -> None:
        """Move the observer's offset, only while this replica is the observer.

        Raises:
            LeaseLost: another replica took the observer's role over.
        """
        async with self._pool.connection() as conn, conn.transaction():
            if not await self._role_is_ours(conn, OBSERVER_ROLE):
                self.refused += 1
                raise LeaseLost(producer, "the observer")
            await conn.execute(
                "INSERT INTO observer_offsets (producer, sequence) VALUES (%s, %s)"
                " ON CONFLICT (producer) DO UPDATE SET sequence = excluded.sequence",
                (producer, sequence),
            )

    # -- notifications ---------------------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        """Hear other replicas' commits and wake this one's listeners; reconnects."""
        pause = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, options=self._options
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    listening.set()
                    pause = 0.2
                    async for note in conn.notifies():
                        self._heard(note.payload)
            except psycopg.Error as error:
                listening.set()  # open() goes on; listeners fall back on their polls
                log.warning("saga log notifications lost (%s); reconnecting", error)
                for listeners in self._listeners.values():
                    for listener in listeners:
                        listener.changed.set()  # look again: something may have been missed
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _heard(self, payload: str) -> None:
        writer, _, body = payload.partition("\n")
        if writer == self.replica:
            return  # woken at the commit already
        for line in body.splitlines():
            saga_id, _, status = line.partition(" ")
            if saga_id in self._listeners:
                self._notify(saga_id, SagaStatus(status))

    # -- reads -----------------------------------------------------------------------

    async def _exists(self, saga_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute("SELECT 1 FROM sagas WHERE saga_id = %s", (saga_id,))
            return await cursor.fetchone() is not None

    async def load(self, saga_id: str) -> SagaRecord | None:
        return (await self._load_many([saga_id])).get(saga_id)

    async def _load_many(self, saga_ids: list[str]) -> dict[str, SagaRecord]:
        """These sagas whole, read in one snapshot (three queries in one round trip)."""
        async with self._pool.connection() as conn:
            async with conn.pipeline():
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                sagas = await conn.execute(
                    "SELECT * FROM sagas WHERE saga_id = ANY(%s)", (saga_ids,)
                )
                attempts = await conn.execute(
                    "SELECT * FROM attempts WHERE saga_id = ANY(%s) ORDER BY id", (saga_ids,)
                )
                steps = await conn.execute(
                    "SELECT saga_id, name, status, result FROM steps WHERE saga_id = ANY(%s)"
                    " ORDER BY saga_id, position",
                    (saga_ids,),
                )
                await conn.execute("COMMIT")
            return _records(
                await sagas.fetchall(), await steps.fetchall(), await attempts.fetchall()
            )

    async def load_unfinished(self) -> list[SagaRecord]:
        ids = await self.unfinished()
        records = await self._load_many(ids)
        return [records[s] for s in ids if s in records]

    async def list_sagas(
        self,
        status: SagaStatus | None,
        before: Cursor | None,
        limit: int,
        where: SagaFilter = EVERY_SAGA,
    ) -> list[SagaRecord]:
        clauses, args = filter_clauses(where, "%s", _as_is)
        if status is not None:
            clauses.append("status = %s")
            args.append(status.value)
        if before is not None:
            clauses.append("(created_at, saga_id) < (%s, %s)")
            args.extend(before)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT * FROM sagas {condition} ORDER BY created_at DESC, saga_id DESC LIMIT %s",
            (*args, limit),
        )
        return [saga_from_row(row, (), _as_is) for row in rows]

    async def count_sagas(self, where: SagaFilter = EVERY_SAGA) -> dict[SagaStatus, int]:
        clauses, args = filter_clauses(where, "%s", _as_is)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT status, count(*) AS n FROM sagas {condition} GROUP BY status", args
        )
        return {SagaStatus(row["status"]): int(row["n"]) for row in rows}

    async def history(self, saga_id: str, after_seq: int = 0) -> list[Transition]:
        rows = await self._fetch(
            "SELECT * FROM transitions WHERE saga_id = %s AND seq > %s ORDER BY seq",
            (saga_id, after_seq),
        )
        return [
            Transition(
                saga_id=r["saga_id"],
                seq=r["seq"],
                kind=Kind(r["kind"]),
                at=r["at"],
                status=SagaStatus(r["status"]),
                step=r["step"],
                attempt=r["attempt"],
                detail=r["detail"],
            )
            for r in rows
        ]

    async def unfinished(self) -> list[str]:
        rows = await self._fetch(
            "SELECT saga_id FROM sagas WHERE status = ANY(%s) ORDER BY created_at, saga_id",
            (_UNFINISHED_VALUES,),
        )
        return [row["saga_id"] for row in rows]

    async def overdue(self, mode: str, now: datetime) -> list[str]:
        rows = await self._fetch(
            "SELECT saga_id FROM sagas WHERE status = ANY(%s) AND mode = %s AND deadline <= %s"
            " ORDER BY created_at, saga_id",
            (_UNFINISHED_VALUES, mode, now),
        )
        return [row["saga_id"] for row in rows]

    async def finished_untold(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT saga_id, definition FROM sagas"
            " WHERE finished_at IS NOT NULL AND told_at IS NULL ORDER BY finished_at LIMIT %s",
            (limit,),
        )
        return [(row["saga_id"], row["definition"]) for row in rows]

    async def mark_told(self, saga_ids: Sequence[str]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE sagas SET told_at = now() WHERE saga_id = ANY(%s) AND told_at IS NULL",
                (list(saga_ids),),
            )

    async def prune_finished(self, finished_before: datetime, limit: int) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM sagas WHERE saga_id IN (SELECT saga_id FROM sagas"
                " WHERE told_at IS NOT NULL AND finished_at < %s ORDER BY finished_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED) RETURNING saga_id",
                (finished_before, limit),
            )
            gone = [row["saga_id"] for row in await cursor.fetchall()]
            if gone:
                for table in ("transitions", "attempts", "steps"):
                    await conn.execute(
                        sql.SQL("DELETE FROM {} WHERE saga_id = ANY(%s)").format(
                            sql.Identifier(table)
                        ),
                        (gone,),
                    )
        return len(gone)

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[Row]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()


class PostgresOffsets:
    """The choreography observer's stream offsets in the shared log, moved only by the
    replica that holds the observer's role (``ObserverOffsets`` in
    coordinator/choreography/observer.py)."""

    def __init__(self, saga_log: PostgresSagaLog) -> None:
        self._log = saga_log

    async def open(self) -> None:
        """Nothing to open: the log is."""

    async def close(self) -> None:
        """Nothing to close: the log is closed by its owner."""

    async def next_sequence(self, producer: str) -> int:
        return await self._log.observer_offset(producer)

    async def save(self, producer: str, sequence: int) -> None:
        await self._log.save_observer_offset(producer, sequence)


def _first_of_each_key(creates: list[_Write]) -> list[_Write]:
    """The creates to insert: all but a second one with a key already in the batch (it
    finds the first one's saga)."""
    keys: set[str] = set()
    inserting: list[_Write] = []
    for write in creates:
        assert write.new is not None
        key = write.new.idempotency_key
        if key and key in keys:
            continue
        if key:
            keys.add(key)
        inserting.append(write)
    return inserting


def _headers(rows: list[Row]) -> dict[str, _Header]:
    return {
        row["saga_id"]: _Header(
            status=SagaStatus(row["status"]),
            last_seq=row["last_seq"],
            round=row["round"],
            owner=row["owner"],
            fence=row["fence"],
            expired=row["expired"],
        )
        for row in rows
    }


def _saga_params(new: NewSaga, replica: str, lease_seconds: float) -> tuple[Any, ...]:
    return (
        new.saga_id,
        new.definition,
        new.mode,
        SagaStatus.RUNNING.value,
        Direction.FORWARD.value,
        new.data,
        new.idempotency_key or None,
        new.request_hash,
        new.trace_id,
        new.created_at,
        new.created_at,
        new.deadline,
        replica,
        lease_seconds,
    )


def _transition_params(t: Transition, writer: str, fence: int) -> tuple[Any, ...]:
    return (
        t.saga_id,
        t.seq,
        t.kind.value,
        t.step,
        t.attempt,
        t.at,
        t.status.value,
        t.detail,
        writer,
        fence,
    )


def _header_params(saga_id: str, h: _Header, lease_seconds: float) -> tuple[Any, ...]:
    failure = h.failure
    return (
        h.status.value,
        h.direction.value if h.direction else None,
        failure.step if failure else None,
        failure.code if failure else None,
        failure.reason if failure else None,
        failure.message if failure else None,
        h.round,
        h.updated_at,
        h.finished_at,
        h.last_seq,
        h.owner,
        h.fence,
        h.renew,
        lease_seconds,
        saga_id,
    )


def _change_statements(
    saga_id: str, change: Change, round_: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """The attempts' and steps' statements of one change, in the order they apply."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if change.interrupt_open_attempts:
        statements.append((_INTERRUPT, (AttemptOutcome.INTERRUPTED.value, change.at, saga_id)))
    moved = change.attempt
    if moved is not None and moved.outcome is None:
        statements.append(
            (
                _START_ATTEMPT,
                (saga_id, change.step, moved.phase.value, moved.number, round_, change.at),
            )
        )
    elif moved is not None:
        error = moved.error
        statements.append(
            (
                _END_ATTEMPT,
                (
                    change.at,
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
        )
    if change.step and (change.step_status is not None or change.result is not None):
        statements.append(
            (
                _UPDATE_STEP,
                (
                    change.step_status.value if change.step_status else None,
                    change.result,
                    saga_id,
                    change.step,
                ),
            )
        )
    return statements


def _payloads(writer: str, heard: list[tuple[str, SagaStatus]]) -> list[str]:
    """NOTIFY payloads naming each saga once with its latest status, each under the
    server's size limit; the first line says who wrote."""
    latest: dict[str, SagaStatus] = {}
    for saga_id, status in heard:
        latest[saga_id] = status
    payloads: list[str] = []
    lines: list[str] = []
    size = len(writer)
    for saga_id, status in latest.items():
        line = f"{saga_id} {status.value}"
        if lines and size + len(line) + 1 > _NOTIFY_BYTES:
            payloads.append("\n".join([writer, *lines]))
            lines, size = [], len(writer)
        lines.append(line)
        size += len(line) + 1
    if lines:
        payloads.append("\n".join([writer, *lines]))
    return payloads


def _as_is(value: Any) -> Any:
    """PostgreSQL's times are datetimes already (``timestamptz``)."""
    return value


def _records(sagas: list[Row], steps: list[Row], attempts: list[Row]) -> dict[str, SagaRecord]:
    by_step: dict[tuple[str, str], list[AttemptRecord]] = {}
    for a in attempts:
        by_step.setdefault((a["saga_id"], a["step"]), []).append(attempt_from_row(a, _as_is))
    steps_of: dict[str, list[StepRecord]] = {}
    for s in steps:
        steps_of.setdefault(s["saga_id"], []).append(
            StepRecord(
                name=s["name"],
                status=StepStatus(s["status"]),
                result=bytes(s["result"]),
                attempts=tuple(by_step.get((s["saga_id"], s["name"]), ())),
            )
        )
    return {
        row["saga_id"]: saga_from_row(row, tuple(steps_of.get(row["saga_id"], ())), _as_is)
        for row in sagas
    }


async def drop_schema(dsn: str, schema: str) -> None:
    """Remove a saga log's schema and everything in it (a bench's or a test's)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def is_postgres_url(value: str) -> bool:
    """Whether a saga log setting names a PostgreSQL database."""
    return value.startswith(("postgresql://", "postgres://"))
