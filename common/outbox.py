"""The transactional outbox: events commit in the same transaction as their cause.

:func:`append` is called with the connection of the business transaction, so a
rolled-back change leaves no event and a committed one always has its event.
:class:`Outbox` reads them back in sequence order for ``Subscribe`` and wakes
subscribers when new ones commit, so nobody polls in a tight loop.

**Retention** (:meth:`Outbox.prune`). The outbox notes where each consumer's stream is
(the next sequence it will be sent, by consumer name) whenever the stream reads, and
keeps those positions in ``outbox_reader``. An event goes once it is older than the
window *and* every consumer heard from within the window has been sent past it; the
newest event always stays (``MAX(sequence)`` is the stream's end). A consumer silent for
longer than the window is forgotten and may come back to a stream that starts later
than its offset. It loses nothing it could still act on: an event older than the
window is about a saga created longer ago than that, and with the barrier's window no
longer than the outbox's (the defaults are equal), a reaction to it either finds its
step's barrier row (a replay, no effect) or none, and is refused by the barrier's
horizon (common/barrier.py). What it does lose is the view: the coordinator's
observer may leave such a saga STALLED, as it would with the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf import any_pb2
from google.protobuf.message import Message

from common.event_tail import DEFAULT_SIZE, EventTail, TailEvent
from common.store import Connection, Row, Store, utc_now
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
-- Where each consumer's stream was (the next sequence it is sent) when last heard from.
CREATE TABLE IF NOT EXISTS outbox_reader (
    consumer      TEXT PRIMARY KEY,
    next_sequence INTEGER NOT NULL,
    seen_at       TEXT NOT NULL
);
"""
# On PostgreSQL (common/pg_store.py), where several replicas append at once: a sequence
# is taken under a lock held to the commit, so sequences commit in order and a reader
# (the relay) never sees n + 1 before n; every append wakes every replica's readers.
POSTGRES_SCHEMA = """
CREATE OR REPLACE FUNCTION outbox_in_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sagawire:' || TG_TABLE_SCHEMA || ':outbox'));
    NEW.sequence := nextval(pg_get_serial_sequence(
        quote_ident(TG_TABLE_SCHEMA) || '.outbox', 'sequence'));
    PERFORM pg_notify('outbox.' || TG_TABLE_SCHEMA, '');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS outbox_in_commit_order ON outbox;
CREATE TRIGGER outbox_in_commit_order BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_in_commit_order();
"""
# Consumers whose positions are kept in memory between two pruning passes; a flood of
# names beyond this drops the longest silent.
MAX_READERS = 256

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
    conn: Connection,
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


def _to_event(source: str, row: Row) -> events_pb2.Event:
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


def _prune(
    conn: Connection,
    readers: Mapping[str, tuple[int, datetime]],
    older_than: datetime,
    limit: int,
) -> int:
    conn.executemany(
        "INSERT INTO outbox_reader (consumer, next_sequence, seen_at) VALUES (?, ?, ?)"
        " ON CONFLICT (consumer) DO UPDATE SET next_sequence = excluded.next_sequence,"
        " seen_at = excluded.seen_at",
        [
            (name, at, seen.isoformat(timespec="microseconds"))
            for name, (at, seen) in readers.items()
        ],
    )
    conn.execute(
        "DELETE FROM outbox_reader WHERE seen_at < ?",
        (older_than.isoformat(timespec="microseconds"),),
    )
    newest = int(conn.execute(_LAST_SEQUENCE).fetchone()[0])
    held = conn.execute("SELECT MIN(next_sequence) FROM outbox_reader").fetchone()[0]
    bound = newest if held is None else min(int(held), newest)  # events before it may go
    last = None
    for row in conn.execute(
        "SELECT sequence, time FROM outbox WHERE sequence < ? ORDER BY sequence LIMIT ?",
        (bound, limit),
    ):
        if datetime.fromisoformat(row["time"]) >= older_than:
            break  # the oldest first: what follows is newer (a clock step back only delays)
        last = row["sequence"]
    if last is None:
        return 0
    return conn.execute("DELETE FROM outbox WHERE sequence <= ?", (last,)).rowcount


class Outbox:
    """Reads a service's committed events and wakes waiters when more commit.

    The newest events are kept decoded in memory (:class:`common.event_tail.EventTail`),
    read from the file once per wave of commits however many streams want them.
    """

    def __init__(self, db: Store, source: str, tail_size: int = DEFAULT_SIZE) -> None:
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
        # Consumer name -> (the next sequence its stream reads, when): see prune().
        self._readers: dict[str, tuple[int, datetime]] = {}

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

        def query(conn: Connection) -> tuple[list[events_pb2.Event], int, bool]:
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
        reader: str = "",
    ) -> tuple[list[events_pb2.Event], int, bool]:
        """As :meth:`read_batch`, for streams: from the shared tail when it holds
        ``from_sequence``, else from the file. It sees every commit notified before the
        call, and any other within a second. The events may be shared with other
        readers: copy one before changing it. ``reader``: the consumer whose stream
        reads, noted with ``from_sequence`` for retention."""
        if reader:
            self._note_reader(reader, from_sequence)
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

            def query(conn: Connection) -> tuple[int, list[TailEvent]]:
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

    def _note_reader(self, reader: str, from_sequence: int) -> None:
        self._readers.pop(reader, None)  # re-inserted last: the dict is in order of reads
        self._readers[reader] = (from_sequence, utc_now())
        while len(self._readers) > MAX_READERS:
            del self._readers[next(iter(self._readers))]

    async def prune(self, window: timedelta, limit: int, now: datetime | None = None) -> int:
        """Delete up to ``limit`` of the oldest events that are older than ``window`` and
        that every consumer heard from within it was sent past (see the module doc);
        how many."""
        older_than = (now or utc_now()) - window
        readers = dict(self._readers)
        for name, (_, seen) in readers.items():
            if seen < older_than:
                self._readers.pop(name, None)
        return await self._db.transaction(lambda conn: _prune(conn, readers, older_than, limit))

    async def last_sequence(self) -> int:
        def query(conn: Connection) -> int:
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
