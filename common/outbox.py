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
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf import any_pb2
from google.protobuf.message import Message

from common.event_tail import DEFAULT_SIZE, EventTail, TailEvent
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
    data     BLOB NOT NULL,
    -- The saga-mode header again (NULL without one), so Subscribe filters on it in SQL
    -- without decoding the headers of every row.
    mode     TEXT
);
"""

# The header consumers filter on most (choreographed sagas only); see the ``mode`` column.
MODE_HEADER = "saga-mode"

_INSERT = (
    "INSERT INTO outbox (event_id, type, subject, time, headers, data, mode)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_LAST_SEQUENCE = "SELECT COALESCE(MAX(sequence), 0) FROM outbox"
_NEWEST_AFTER = "SELECT * FROM outbox WHERE sequence > ? ORDER BY sequence DESC LIMIT ?"
# The shared tail is re-read after this long even without a notify: the same safety
# net as a stream's idle re-check, for a commit whose notify was missed.
_TAIL_MAX_AGE_SECONDS = 1.0


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
    header_map = dict(headers or {})
    header_msg = events_pb2.Event(headers=header_map)
    conn.execute(
        _INSERT,
        (
            event_id,
            event_type,
            subject,
            utc_now().isoformat(),
            header_msg.SerializeToString(),
            packed.SerializeToString(),
            header_map.get(MODE_HEADER),
        ),
    )
    return event_id


def _select(types: frozenset[str], by_mode: bool) -> str:
    """The statement for one kind of filter; constant per subscriber, so sqlite3 caches it."""
    sql = "SELECT * FROM outbox WHERE sequence >= ?"
    if types:
        sql += " AND type IN (" + ",".join("?" * len(types)) + ")"
    if by_mode:
        sql += " AND mode = ?"
    return sql + " ORDER BY sequence LIMIT ?"


def _split_mode(headers: Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """The saga-mode header (filtered on its own column) and the other headers."""
    rest = dict(headers or {})
    return rest.pop(MODE_HEADER, None), rest


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_event(source: str, row: sqlite3.Row) -> events_pb2.Event:
    event = events_pb2.Event.FromString(row["headers"])
    event.id = row["event_id"]
    event.source = source
    event.type = row["type"]
    event.subject = row["subject"]
    event.sequence = row["sequence"]
    # fromisoformat and integer fields: FromJsonString goes through strptime, a few
    # percent of a service's CPU when it streams events.
    since_epoch = datetime.fromisoformat(row["time"]) - _EPOCH
    event.time.seconds = since_epoch.days * 86_400 + since_epoch.seconds
    event.time.nanos = since_epoch.microseconds * 1_000
    event.data.ParseFromString(row["data"])
    return event


class Outbox:
    """Reads a service's committed events and wakes waiters when more commit.

    The newest events are kept decoded in memory (:class:`common.event_tail.EventTail`),
    read from the file once per wave of commits however many streams want them.
    """

    def __init__(self, db: Database, source: str, tail_size: int = DEFAULT_SIZE) -> None:
        self._db = db
        self.source = source
        self._closed = False
        self._tail: EventTail | None = None
        self._tail_size = tail_size
        self._tail_version = -1  # the notify count the tail is known fresh for
        self._tail_loaded_at = 0.0
        self._tail_loading: asyncio.Future[None] | None = None
        # Bumped on every notify; a reader notes it before reading so no commit is missed.
        self.version = 0
        # Notifies that named no saga mode (anything may have committed), and notifies per
        # mode: a stream that wants one mode wakes only for that mode's commits.
        self._unspecified = 0
        self._by_mode: dict[str, int] = {}
        self._waiters: set[tuple[str | None, asyncio.Future[None]]] = set()

    def stamp(self, mode: str | None = None) -> tuple[int, int]:
        """What a reader notes before reading: the commits it cares about so far (all
        commits, or those that may hold events of saga ``mode``)."""
        if mode is None:
            return (self.version, 0)
        return (self._unspecified, self._by_mode.get(mode, 0))

    async def notify(self, mode: str | None = None) -> None:
        """Call after a transaction that may have appended events has committed; ``mode``
        when every event it appended carries that saga-mode header (wakes fewer streams)."""
        self.version += 1
        if mode is None:
            self._unspecified += 1
        else:
            self._by_mode[mode] = self._by_mode.get(mode, 0) + 1
        for wanted, waiter in self._waiters:
            if (mode is None or wanted is None or wanted == mode) and not waiter.done():
                waiter.set_result(None)

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
        events, scanned, _ = await self.read_batch(from_sequence, limit, types, headers)
        return events, scanned

    async def read_batch(
        self,
        from_sequence: int,
        limit: int,
        types: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> tuple[list[events_pb2.Event], int, bool]:
        """As :meth:`read`, and whether the read reached the last stored event.

        The type and saga-mode filters run in SQL, so rows nobody asked for are
        never decoded; other headers are compared on the decoded events.
        """
        mode, wanted = _split_mode(headers)
        sql = _select(types, mode is not None)
        params: list[object] = [from_sequence, *sorted(types)]
        if mode is not None:
            params.append(mode)
        params.append(limit)

        def query(conn: sqlite3.Connection) -> tuple[list[events_pb2.Event], int, bool]:
            rows = conn.execute(sql, params).fetchall()
            if len(rows) >= limit:
                scanned, complete = rows[-1]["sequence"], False
            else:
                # Every matching row up to the end of this snapshot was read.
                last = int(conn.execute(_LAST_SEQUENCE).fetchone()[0])
                scanned, complete = max(last, from_sequence - 1), True
            kept = [_to_event(self.source, r) for r in rows]
            if wanted:
                kept = [e for e in kept if wanted.items() <= dict(e.headers).items()]
            return kept, scanned, complete

        return await self._db.read(query)

    async def read_notified(
        self,
        from_sequence: int,
        limit: int,
        types: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> tuple[list[events_pb2.Event], int, bool]:
        """As :meth:`read_batch`, for streams: from the shared tail when it holds
        ``from_sequence``, else from the file. It sees every commit notified before the
        call, and any other within a second. The events may be shared with other
        readers: copy one before changing it."""
        tail = await self._fresh_tail()
        if not tail.covers(from_sequence):
            return await self.read_batch(from_sequence, limit, types, headers)
        mode, wanted = _split_mode(headers)
        return tail.read(from_sequence, limit, types, mode, wanted)

    async def _fresh_tail(self) -> EventTail:
        """The tail, holding every event committed before this call (one load at a time,
        shared by every stream that asks meanwhile)."""
        wanted = self.version
        if time.monotonic() - self._tail_loaded_at > _TAIL_MAX_AGE_SECONDS:
            self._tail_version = -1
        while self._tail is None or self._tail_version < wanted:
            if self._tail_loading is None:
                self._tail_loading = asyncio.ensure_future(self._load_tail())
            await asyncio.shield(self._tail_loading)
        return self._tail

    async def _load_tail(self) -> None:
        try:
            version = self.version  # noted first: every commit notified so far is read
            tail = self._tail

            def query(conn: sqlite3.Connection) -> tuple[int, list[TailEvent]]:
                if tail is None:
                    return int(conn.execute(_LAST_SEQUENCE).fetchone()[0]), []
                rows = conn.execute(_NEWEST_AFTER, (tail.end, tail.size)).fetchall()
                rows.reverse()
                return 0, [TailEvent(_to_event(self.source, r), r["mode"]) for r in rows]

            last, newest = await self._db.read(query)
            if tail is None:
                self._tail = EventTail(last, self._tail_size)
            else:
                tail.extend(newest, complete=len(newest) < tail.size)
            self._tail_version = version
            self._tail_loaded_at = time.monotonic()
        finally:
            self._tail_loading = None

    async def last_sequence(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(_LAST_SEQUENCE).fetchone()
            return int(row[0])

        return await self._db.read(query)

    async def wait_for_commit(
        self, seen: tuple[int, int], timeout: float, mode: str | None = None
    ) -> None:
        """Wait until something committed after ``seen`` (a :meth:`stamp` for ``mode``),
        closing, or timeout."""
        if self.stamp(mode) != seen or self._closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (mode, waiter)
        self._waiters.add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.discard(entry)
