"""The transactional outbox: events commit in the same transaction as their cause.

:func:`append` is called with the connection of the business transaction, so a
rolled-back change leaves no event and a committed one always has its event.
:class:`Outbox` reads them back in sequence order for ``Subscribe`` and wakes
subscribers when new ones commit, so nobody polls in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Mapping

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from common.store import Database, utc_now
from protos.sagawire.v1 import events_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type     TEXT NOT NULL,
    subject  TEXT NOT NULL,
    time     TEXT NOT NULL,
    headers  BLOB NOT NULL,
    data     BLOB NOT NULL
);
"""


def append(
    conn: sqlite3.Connection,
    event_type: str,
    subject: str,
    data: Message,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Add an event to the outbox inside the caller's transaction; returns its id."""
    event_id = str(uuid.uuid4())
    packed = any_pb2.Any()
    packed.Pack(data)
    header_msg = events_pb2.Event(headers=dict(headers or {}))
    conn.execute(
        "INSERT INTO outbox (event_id, type, subject, time, headers, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            event_id,
            event_type,
            subject,
            utc_now().isoformat(),
            header_msg.SerializeToString(),
            packed.SerializeToString(),
        ),
    )
    return event_id


def _to_event(source: str, row: sqlite3.Row) -> events_pb2.Event:
    event = events_pb2.Event.FromString(row["headers"])
    event.id = row["event_id"]
    event.source = source
    event.type = row["type"]
    event.subject = row["subject"]
    event.sequence = row["sequence"]
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(row["time"].replace("+00:00", "Z"))
    event.time.CopyFrom(stamp)
    event.data.ParseFromString(row["data"])
    return event


class Outbox:
    """Reads a service's committed events and wakes waiters when more commit."""

    def __init__(self, db: Database, source: str) -> None:
        self._db = db
        self.source = source
        self._committed = asyncio.Condition()
        self._closed = False
        # Bumped on every notify; a reader notes it before reading so no commit is missed.
        self.version = 0

    async def notify(self) -> None:
        """Call after a transaction that may have appended events has committed."""
        async with self._committed:
            self.version += 1
            self._committed.notify_all()

    async def close(self) -> None:
        """Wake every waiter so open streams can end."""
        self._closed = True
        await self.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    async def read(
        self,
        from_sequence: int,
        limit: int,
        types: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> tuple[list[events_pb2.Event], int]:
        """Up to ``limit`` stored events from ``from_sequence`` on, in order, keeping only
        ``types`` (all when empty) and events carrying every one of ``headers``; also the
        last sequence scanned (0: nothing stored yet)."""
        wanted = dict(headers or {})

        def query(conn: sqlite3.Connection) -> tuple[list[events_pb2.Event], int]:
            rows = conn.execute(
                "SELECT * FROM outbox WHERE sequence >= ? ORDER BY sequence LIMIT ?",
                (from_sequence, limit),
            ).fetchall()
            scanned = rows[-1]["sequence"] if rows else from_sequence - 1
            kept = [_to_event(self.source, r) for r in rows if not types or r["type"] in types]
            if wanted:
                kept = [e for e in kept if wanted.items() <= dict(e.headers).items()]
            return kept, scanned

        return await self._db.read(query)

    async def last_sequence(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM outbox").fetchone()
            return int(row[0])

        return await self._db.read(query)

    async def wait_for_commit(self, seen_version: int, timeout: float) -> None:
        """Wait until something committed after ``seen_version``, closing, or timeout."""
        async with self._committed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._committed.wait_for(lambda: self.version != seen_version or self._closed),
                    timeout,
                )
