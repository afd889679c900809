"""A service's store on PostgreSQL, behind the interface of the SQLite one (common/store.py).

Selected by ``SAGAWIRE_STORE=postgresql://...``; the service's tables live in a schema
of its own (``<SAGAWIRE_STORE_PREFIX>_<service>``), created at start, so no service
reads another's. Several replicas of a service may share it.

**Why the code written for SQLite's single writer stays correct across replicas.**
SQLite serialises every write on one thread; here, each piece of work runs in its own
``SERIALIZABLE`` transaction on a pooled connection, and one that loses a race with a
concurrent one (a serialization failure or a deadlock) is rolled back whole and run
again (:class:`~common.store.StoreConflict` if it keeps losing). So every
read-then-write the services do (stock, balances, the barrier's look-up, a choreography
join) behaves as if the transactions ran one after the other: PostgreSQL's
serializable snapshot isolation refuses the loser of a lost update or a write skew, and
the barrier's primary key refuses a second row for the same (saga, step, phase) whoever
writes it. Reads run in ``REPEATABLE READ READ ONLY`` transactions: a consistent
snapshot, as the SQLite reader's.

**The outbox commits in sequence order** (common/outbox.py's PostgreSQL trigger): an
event's sequence is taken under a lock held to the commit, so a reader never sees
sequence n + 1 before n and a relay never skips an event still in flight; each append
also sends a ``NOTIFY`` that every replica hears, so the relay wakes for commits of
every replica.

**One replica plays a role** (:meth:`PostgresDatabase.while_leader`): a session-level
advisory lock, held on a connection of its own, decides which replica runs the outbox
relay; a replica that dies loses its connection and its lock with it, and another takes
the role within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import pq, sql
from psycopg_pool import ConnectionPool

from common import pg_dialect
from common.store import StoreConflict, run_collecting, run_committed

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# Attempts of one piece of work that keeps losing races before StoreConflict is raised.
MAX_ATTEMPTS = 30
# A replica waiting for a role asks for it this often; its holder checks it as often.
LEADER_POLL_SECONDS = 1.0
_CONFLICTS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def _lock_key(schema: str, role: str) -> sql.Composed:
    return sql.SQL("hashtext({})").format(sql.Literal(f"sagawire:{schema}:{role}"))


class PgConnection:
    """What a piece of work is handed: the SQLite statements, run by PostgreSQL."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self._raw = raw
        # A race was lost: nothing more may run in this transaction (it runs again whole).
        self.doomed = False

    def execute(self, query: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        if self.doomed:
            raise StoreConflict("the transaction lost a race and runs again")
        try:
            if parameters:
                return self._raw.execute(pg_dialect.statement(query), parameters)
            return self._raw.execute(query)
        except _CONFLICTS as error:
            self.doomed = True
            raise StoreConflict(str(error)) from error

    def executemany(self, query: str, parameters: Any, /) -> psycopg.Cursor[Any]:
        if self.doomed:
            raise StoreConflict("the transaction lost a race and runs again")
        cursor = self._raw.cursor()
        try:
            cursor.executemany(pg_dialect.statement(query), list(parameters))
        except _CONFLICTS as error:
            self.doomed = True
            raise StoreConflict(str(error)) from error
        return cursor

    @property
    def in_transaction(self) -> bool:
        status = self._raw.info.transaction_status
        return not self.doomed and status == pq.TransactionStatus.INTRANS


class PostgresDatabase:
    """One service's schema on a PostgreSQL server; see the module doc."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        schema: str,
        ddl: str,
        *,
        pool_size: int = 4,
        on_notify: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.url = url
        self.schema = schema
        self._ddl = ddl
        self._pool_size = pool_size
        self._on_notify = on_notify
        self._options = f"-c search_path={schema} -c timezone=UTC"
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._threads = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=schema)
        self._listener: asyncio.Task[None] | None = None
        self._claims: list[psycopg.AsyncConnection[Any]] = []
        self.writes = 0
        self.conflicts = 0  # transactions run again after losing a race
        self.channel = f"outbox.{schema}"

    def __repr__(self) -> str:
        return f"PostgresDatabase(schema={self.schema})"

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, options=self._options, connect_timeout=5
        )

    async def open(self) -> None:
        """Create the schema and its tables (once, whichever replica comes first), then
        the connection pool and the listener of outbox commits."""
        async with await self._connect() as conn, conn.transaction():
            # One transaction (one commit, not one per table), one replica at a time.
            key = _lock_key(self.schema, "schema")
            await conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(key))
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            await conn.execute(self._ddl.encode())
        self._pool = ConnectionPool(
            self.url,
            min_size=self._pool_size,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "options": self._options, "row_factory": pg_dialect.pg_row},
            name=f"store-{self.schema}",
            open=False,
        )
        await asyncio.get_running_loop().run_in_executor(
            self._threads, partial(self._pool.open, wait=True, timeout=30)
        )
        if self._on_notify is not None:
            self._listener = asyncio.create_task(self._listen(), name=f"listen-{self.schema}")
        log.info("store on PostgreSQL schema=%s", self.schema)

    async def transaction(self, work: Callable[[PgConnection], _T]) -> _T:
        """Run ``work(conn)`` in a serializable transaction, again if it loses a race;
        return once it is committed."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._write, work, context)

    async def read(self, work: Callable[[PgConnection], _T]) -> _T:
        """Run ``work(conn)`` in one read-only snapshot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._read, work)

    def _pooled(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            raise RuntimeError(f"store schema {self.schema} is not open")
        return self._pool

    def _write(self, work: Callable[[PgConnection], _T], context: contextvars.Context) -> _T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            with self._pooled().connection() as raw:
                conn = PgConnection(raw)
                try:
                    raw.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    value, hooks = context.run(run_collecting, work, conn)
                    if conn.doomed:  # the work went on after a lost race: not kept
                        raise StoreConflict("the transaction lost a race")
                    raw.execute("COMMIT")
                except (StoreConflict, *_CONFLICTS) as lost:
                    _rollback(raw)
                    self.conflicts += 1
                    if attempt == MAX_ATTEMPTS:
                        raise StoreConflict(f"lost {attempt} races in a row: {lost}") from lost
                    # Jittered, growing: the winners of the race get out of the way.
                    time.sleep(random.uniform(0, min(0.001 * 2**attempt, 0.1)))
                    continue
                except BaseException:
                    _rollback(raw)
                    raise
                self.writes += 1
                run_committed(hooks, context)  # only the attempt that committed
                return value
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[PgConnection], _T]) -> _T:
        with self._pooled().connection() as raw:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return work(PgConnection(raw))
            finally:
                _rollback(raw)

    async def while_leader(self, role: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run`` once this replica holds ``role`` (waiting for it as long as another
        does), for as long as it holds it: a lost lock (its connection broke) cancels
        ``run`` and the wait starts over. Ends when ``run`` does."""
        key = _lock_key(self.schema, role)
        while True:
            try:
                conn = await self._connect()
            except psycopg.OperationalError as error:
                log.warning("cannot ask for role=%s schema=%s: %s", role, self.schema, error)
                await asyncio.sleep(LEADER_POLL_SECONDS)
                continue
            try:
                if not await _try_lock(conn, key):
                    await asyncio.sleep(LEADER_POLL_SECONDS)
                    continue
                log.info("this replica now plays role=%s schema=%s", role, self.schema)
                async with asyncio.TaskGroup() as tasks:
                    running = tasks.create_task(run(), name=role)
                    tasks.create_task(_watch(conn, running), name=f"{role}-lock")
                return
            except* psycopg.OperationalError as lost:
                log.warning("role=%s lost schema=%s: %s", role, self.schema, lost.exceptions[0])
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def claim(self, role: str) -> bool:
        """Hold ``role`` for as long as this process lives, if no other replica holds it."""
        conn = await self._connect()
        if await _try_lock(conn, _lock_key(self.schema, role)):
            self._claims.append(conn)
            return True
        await conn.close()
        return False

    async def _listen(self) -> None:
        """Wake the outbox's readers for every commit of any replica (see the module doc);
        after a reconnect, once, for what may have been missed meanwhile."""
        assert self._on_notify is not None
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    await self._on_notify()
                    async for _ in conn.notifies():
                        await self._on_notify()
            except psycopg.OperationalError as error:
                log.warning("outbox listener reconnecting schema=%s: %s", self.schema, error)
                await asyncio.sleep(LEADER_POLL_SECONDS)

    async def close(self) -> None:
        """Stop listening, give every role back, close the pool. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        claims, self._claims = self._claims, []
        for conn in claims:
            with contextlib.suppress(Exception):
                await conn.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._threads, pool.close)
        self._threads.shutdown(wait=True)


async def _try_lock(conn: psycopg.AsyncConnection[Any], key: sql.Composed) -> bool:
    cursor = await conn.execute(sql.SQL("SELECT pg_try_advisory_lock({})").format(key))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _watch(conn: psycopg.AsyncConnection[Any], running: asyncio.Task[None]) -> None:
    """Check the lock's connection until ``running`` ends; raise if it broke."""
    while not running.done():
        await asyncio.sleep(LEADER_POLL_SECONDS)
        await conn.execute("SELECT 1")


def _rollback(raw: psycopg.Connection[Any]) -> None:
    if raw.info.transaction_status != pq.TransactionStatus.IDLE and not raw.broken:
        with contextlib.suppress(psycopg.Error):
            raw.execute("ROLLBACK")


async def drop_schemas(url: str, prefix: str) -> None:
    """Remove every service schema of a stack (``<prefix>_<service>``), e.g. a test's."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
            (prefix.replace("_", r"\_") + r"\_%",),
        )
        for (name,) in await cursor.fetchall():
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
            )
