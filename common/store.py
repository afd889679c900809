"""SQLite storage shared by every process: one file, WAL, one writer thread.

All statements of a :class:`Database` run on its own single thread, so a
transaction never interleaves with another and the event loop never blocks on
disk. Concurrent duplicates of a request are therefore serialised, which is
what lets the barrier give them exactly one effect.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from google.protobuf import timestamp_pb2

_T = TypeVar("_T")


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


class Database:
    """One SQLite file, opened in WAL mode, used from one dedicated thread."""

    def __init__(self, path: Path, schema: str, synchronous: str = "FULL") -> None:
        self.path = path
        self._schema = schema
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.stem}")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the file and schema if needed."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(self._schema)
        self._conn = conn

    async def transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in one IMMEDIATE transaction: all of it commits, or none."""
        # run_in_executor does not carry context variables: copy the caller's, so
        # its current span is current inside ``work`` (events written there carry it).
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, context.run, self._in_transaction, work
        )

    async def read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read-only ``work(conn)`` (still on the store's thread, in a transaction)."""
        return await self.transaction(work)

    def _in_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        """Close the file after every queued transaction has finished. Idempotent."""
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
