"""SQLite storage shared by every process: one file, WAL, group commit.

Writes queue up for a single writer thread. It takes everything waiting (up to
``max_batch``), runs each piece of work in its own SAVEPOINT inside one
transaction, commits once, and only then resolves the callers' futures: a
caller never hears "done" before its change is durable, and a failing piece of
work rolls back alone. Under load this turns thousands of fsyncs per second
into a few dozen. Because one thread runs every write, concurrent duplicates of
a request are serialised, which is what lets the barrier give them exactly one
effect. Reads use a second connection on their own thread (WAL lets them run
beside the writer) and see only committed data. The event loop never blocks on
disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from google.protobuf import timestamp_pb2


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_timestamp(iso: str | None) -> timestamp_pb2.Timestamp | None:
    """An ISO-8601 UTC string from the store as a protobuf Timestamp (None stays None)."""
    if not iso:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(iso))
    return stamp


log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Row(Protocol):
    """A result row: by column name or position (sqlite3.Row, and the PostgreSQL store's)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a piece of work is handed inside a transaction: a sqlite3.Connection, or the
    PostgreSQL store's connection speaking the same SQL (common/pg_store.py)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...


class StoreConflict(Exception):
    """A transaction lost a race with a concurrent one (PostgreSQL's serialization failure
    or deadlock): nothing of it was kept, and the whole of it runs again. A piece of work
    must let it through, never handle it in a savepoint."""


class Store(Protocol):
    """A service's durable store: :class:`Database` (SQLite) or the PostgreSQL store."""

    @property
    def dialect(self) -> str: ...

    writes: int

    async def open(self) -> None: ...

    async def transaction(self, work: Callable[[Connection], _T]) -> _T: ...

    async def read(self, work: Callable[[Connection], _T]) -> _T: ...

    async def while_leader(
        self, role: str, run: Callable[[], Coroutine[Any, Any, None]]
    ) -> None: ...

    async def claim(self, role: str) -> bool: ...

    async def close(self) -> None: ...


# What the work running now asked to be done once its transaction commits (None: no
# transaction runs in this context).
_after_commit: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "sagawire_after_commit", default=None
)


def after_commit(callback: Callable[[], None]) -> None:
    """Call ``callback`` once the transaction the current work runs in has committed; never
    if it rolls back or runs again after losing a race (a count of what the work did is
    then counted once). Outside a transaction, at once."""
    pending = _after_commit.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)


def run_collecting(work: Callable[[Any], _T], conn: Any) -> tuple[_T, list[Callable[[], None]]]:
    """``work(conn)``, and what it asked to be done after the commit (:func:`after_commit`).
    Run inside the caller's context (``context.run``), so the hooks are its own."""
    hooks: list[Callable[[], None]] = []
    token = _after_commit.set(hooks)
    try:
        return work(conn), hooks
    finally:
        _after_commit.reset(token)


def run_committed(hooks: Sequence[Callable[[], None]], context: contextvars.Context) -> None:
    """The hooks of a committed piece of work, in its caller's context; one that fails is
    logged and the others still run (what committed stays committed)."""
    for hook in hooks:
        try:
            context.run(hook)
        except Exception:
            log.exception("after-commit hook failed")


Work = Callable[[sqlite3.Connection], Any]
_Delivery = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass
class _Item:
    work: Work
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # The caller's context (its current trace span), so work runs as part of its call.
    context: contextvars.Context


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _deliver(results: list[_Delivery]) -> None:
    for future, value, error in results:
        if future.done():
            continue  # the caller was cancelled; the write happened anyway
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class Database:
    """One SQLite file (WAL): batched writes on one thread, reads on another."""

    dialect = "sqlite"

    def __init__(
        self, path: Path, schema: str, synchronous: str = "FULL", max_batch: int = 512
    ) -> None:
        self.path = path
        self._schema = schema
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{path.stem}")
        self._read_conn: sqlite3.Connection | None = None
        self.writes = 0

    async def open(self) -> None:
        """Create the file and schema, start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._writer = threading.Thread(
            target=self._run_writer, args=(loop, ready), name=f"write-{self.path.stem}", daemon=True
        )
        self._writer.start()
        await ready
        self._read_conn = await loop.run_in_executor(
            self._reader, _connect, self.path, self._synchronous
        )

    async def transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in a write transaction; return once it is committed.

        All of ``work`` commits, or none of it: it runs in its own SAVEPOINT.
        """
        if self._writer is None:
            raise RuntimeError(f"database {self.path} is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Item(work, future, loop, contextvars.copy_context()))
        return await future

    async def read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in one read transaction (a consistent snapshot)."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read, work)

    def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._read_conn
        if conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        conn.execute("BEGIN")
        try:
            return work(conn)
        finally:
            conn.execute("COMMIT")

    async def while_leader(self, role: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run`` as the one process of this store that plays ``role``: a SQLite
        file has one process, so at once."""
        await run()

    async def claim(self, role: str) -> bool:
        """Hold ``role`` for this process's life: a SQLite file is one process's."""
        return True

    async def close(self) -> None:
        """Finish queued writes, then close both connections. Idempotent."""
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            self._queue.put(None)
            await loop.run_in_executor(None, self._writer.join)
            self._writer = None
        if self._read_conn is not None:
            await loop.run_in_executor(self._reader, self._read_conn.close)
            self._read_conn = None
        self._reader.shutdown(wait=True)

    def _run_writer(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = _connect(self.path, self._synchronous)
            conn.executescript(self._schema)
        except BaseException as error:  # reported to open()'s caller
            failed: list[_Delivery] = [(ready, None, error)]
            loop.call_soon_threadsafe(_deliver, failed)
            return
        opened: list[_Delivery] = [(ready, None, None)]
        loop.call_soon_threadsafe(_deliver, opened)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)  # stop after this batch
                        break
                    batch.append(item)
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        results: list[tuple[_Item, Any, BaseException | None]] = []
        committed: list[tuple[list[Callable[[], None]], contextvars.Context]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT work")
                try:
                    value, hooks = item.context.run(run_collecting, item.work, conn)
                except Exception as refused:
                    conn.execute("ROLLBACK TO work")
                    conn.execute("RELEASE work")
                    results.append((item, None, refused))
                else:
                    conn.execute("RELEASE work")
                    results.append((item, value, None))
                    if hooks:
                        committed.append((hooks, item.context))
            conn.execute("COMMIT")
        except Exception as failure:
            log.exception("group commit failed path=%s batch=%d", self.path, len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(item, None, failure) for item in batch]
            committed = []
        for hooks, context in committed:
            run_committed(hooks, context)
        self.writes += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        for item, value, outcome in results:
            by_loop.setdefault(item.loop, []).append((item.future, value, outcome))
        for loop, delivered in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, delivered)
