"""Event consumers: at-least-once delivery, exactly-once effect.

A :class:`Consumer` follows one producer's stream and applies each event's
reaction in a local transaction that also records the event id in the inbox and
moves the stored offset, so a crash at any instant either keeps the effect *and*
the offset, or neither, and a redelivered event is skipped. After a disconnect
it reconnects with backoff (tenacity) and resumes from its offset.

Events are applied one at a time, in order, each in its own savepoint of one
transaction per batch: a happy batch is one commit. When one event fails
transiently (the store is busy, or the service is told to fail by fault
injection: the ``before_apply`` hook, drawn for each event), the events before
it are committed and only that event is retried, with backoff, for as long as it
keeps failing transiently; the events after it wait their turn (per-producer
order). A poison event (undecodable, or failing permanently) is recorded, logged
and skipped, so it never blocks the stream.

Every attempt at an event shows in its trace: a consumer span per attempt, the
failed ones with their error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from opentelemetry.trace import Span

from common.errors import Transient
from common.store import Database, utc_now
from common.subscriber import Subscriber
from common.telemetry import consumer_span
from common.tls import Identity
from protos.sagawire.v1 import events_pb2

log = logging.getLogger(__name__)

# A reaction that fails on a busy store or an injected fault is retried, alone, for as
# long as it keeps failing so, after exponential waits with full jitter.
_TRANSIENT = (sqlite3.OperationalError, Transient)
_FIRST_WAIT = 0.01
_MAX_WAIT = 1.0


def _backoff(failures: int) -> float:
    """How long to wait after the ``failures``-th failure in a row of one event."""
    return random.uniform(0, min(_MAX_WAIT, _FIRST_WAIT * 2**failures))


SCHEMA = """
CREATE TABLE IF NOT EXISTS consumer_offset (
    producer TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    event_id     TEXT PRIMARY KEY,
    producer     TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    processed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS poison_event (
    producer    TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    type        TEXT NOT NULL,
    error       TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (producer, sequence)
);
"""

# A reaction runs inside the consumer's transaction; it may append to the outbox.
Reaction = Callable[[sqlite3.Connection, events_pb2.Event], None]
# Runs before each attempt at an event; may raise Transient (fault injection).
BeforeApply = Callable[[events_pb2.Event], Awaitable[None]]


class PoisonEvent(Exception):
    """Raised by a reaction for an event it can never process (bad payload, broken rule)."""


@dataclass(frozen=True)
class Subscription:
    """Which producer to follow, where it is, and what to do with its events."""

    producer: str
    address: str
    reactions: Mapping[str, Reaction]
    # Only events with these headers are sent at all (e.g. choreographed sagas only).
    match_headers: Mapping[str, str] = field(default_factory=dict)


def _offset(conn: sqlite3.Connection, producer: str) -> int:
    row = conn.execute(
        "SELECT sequence FROM consumer_offset WHERE producer = ?", (producer,)
    ).fetchone()
    return int(row[0]) if row else 0


class Consumer:
    """Follows one producer's EventStream and applies its reactions exactly once."""

    def __init__(
        self,
        db: Database,
        subscription: Subscription,
        consumer_name: str,
        on_commit: Callable[[], object] | None = None,
        channel_options: Sequence[tuple[str, int]] = (),
        before_apply: BeforeApply | None = None,
        identity: Identity | None = None,
    ) -> None:
        self._db = db
        self._sub = subscription
        self._name = consumer_name
        self._on_commit = on_commit
        self._before_apply = before_apply
        self._subscriber = Subscriber(
            producer=subscription.producer,
            address=subscription.address,
            consumer=consumer_name,
            types=sorted(subscription.reactions),
            next_sequence=self._next_sequence,
            handle=self.apply,
            identity=identity or Identity.from_env(consumer_name),
            channel_options=channel_options,
            match_headers=subscription.match_headers,
        )

    @property
    def connected(self) -> asyncio.Event:
        return self._subscriber.connected

    async def _next_sequence(self) -> int:
        return await self.offset() + 1

    @property
    def producer(self) -> str:
        return self._sub.producer

    async def offset(self) -> int:
        return await self._db.read(lambda conn: _offset(conn, self._sub.producer))

    async def run(self) -> None:
        """Follow the producer forever (reconnecting with backoff); ends only when cancelled."""
        await self._subscriber.run()

    async def apply(self, events: Sequence[events_pb2.Event]) -> None:
        """Apply a batch as the stream delivered it: each event once, in order; returns
        once every one of them is committed (retrying the one that fails transiently)."""
        done = 0
        failures = 0  # in a row, of the event at ``done``
        while done < len(events):
            applied, error = await self._apply_from(events, done, failures + 1)
            if applied:
                done += applied
                failures = 0
                await self._committed()
            if error is None:
                continue
            failures += 1
            delay = _backoff(failures)
            event = events[done]
            log.warning(
                "reaction failed transiently, retrying producer=%s sequence=%d type=%s"
                " attempt=%d in_seconds=%.3f error=%s",
                self._sub.producer,
                event.sequence,
                event.type,
                failures + 1,
                delay,
                error,
            )
            await asyncio.sleep(delay)

    async def _apply_from(
        self, events: Sequence[events_pb2.Event], start: int, attempt: int
    ) -> tuple[int, BaseException | None]:
        """Apply ``events[start:]`` up to the first that fails transiently, in one
        transaction; how many were applied (and committed), and that failure."""
        ready, error = len(events), None
        if self._before_apply is not None:
            for index in range(start, len(events)):
                try:
                    await self._before_apply(events[index])
                except Transient as refused:
                    ready, error = index, refused
                    self._failed_attempt(events[index], attempt if index == start else 1, refused)
                    break
        if ready == start:
            return 0, error
        batch = events[start:ready]
        try:
            applied, failed = await self._db.transaction(
                lambda conn: self._apply_in(conn, batch, attempt)
            )
        except _TRANSIENT as whole:  # the commit itself failed: nothing was applied
            return 0, whole
        return applied, failed or error

    def _failed_attempt(self, event: events_pb2.Event, attempt: int, error: Exception) -> None:
        """An attempt refused before its transaction still shows in the event's trace."""
        with contextlib.suppress(Transient), self._span(event, attempt):
            raise error

    def _span(self, event: events_pb2.Event, attempt: int) -> AbstractContextManager[Span]:
        # One span per attempt at an event, continuing the producer's trace.
        span = consumer_span(event, f"{self._name} {event.type}")
        if attempt > 1:
            return _with_attempt(span, attempt)
        return span

    async def _committed(self) -> None:
        if self._on_commit is not None:
            result = self._on_commit()
            if asyncio.iscoroutine(result):
                await result

    def _apply_in(
        self, conn: sqlite3.Connection, events: Sequence[events_pb2.Event], attempt: int
    ) -> tuple[int, BaseException | None]:
        """Apply events in order up to the first that fails transiently (rolled back);
        move the offset past those applied. How many were applied, and that failure."""
        producer = self._sub.producer
        offset = _offset(conn, producer)
        applied, failure = 0, None
        for event in events:
            if event.sequence > offset:  # else redelivered below our offset: already applied
                try:
                    self._apply_one(conn, event, attempt if applied == 0 else 1)
                except _TRANSIENT as error:
                    if not conn.in_transaction:
                        raise  # SQLite ended the whole transaction: nothing of it stays
                    failure = error
                    break
                offset = event.sequence
            applied += 1
        if applied:
            conn.execute(
                "INSERT INTO consumer_offset (producer, sequence) VALUES (?, ?)"
                " ON CONFLICT (producer) DO UPDATE SET sequence = excluded.sequence",
                (producer, offset),
            )
        return applied, failure

    def _apply_one(self, conn: sqlite3.Connection, event: events_pb2.Event, attempt: int) -> None:
        """React to one event and record it in the inbox, in a savepoint of its own: a
        transient failure rolls it back and is raised (the event is retried); any other
        failure makes it poison (rolled back, recorded, skipped)."""
        if conn.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event.id,)).fetchone():
            return
        reaction = self._sub.reactions.get(event.type)
        conn.execute("SAVEPOINT event")
        try:
            if reaction is not None:
                with self._span(event, attempt):
                    reaction(conn, event)
        except _TRANSIENT:
            conn.execute("ROLLBACK TO event")
            conn.execute("RELEASE event")
            raise
        except Exception as error:  # poison: record it, skip it, keep the stream moving
            conn.execute("ROLLBACK TO event")
            self._poisoned(conn, event, error)
        conn.execute(
            "INSERT INTO inbox (event_id, producer, sequence, processed_at) VALUES (?, ?, ?, ?)",
            (event.id, self._sub.producer, event.sequence, utc_now().isoformat()),
        )
        conn.execute("RELEASE event")

    def _poisoned(
        self, conn: sqlite3.Connection, event: events_pb2.Event, error: Exception
    ) -> None:
        log.error(
            "poison event skipped producer=%s sequence=%d type=%s error=%s",
            self._sub.producer,
            event.sequence,
            event.type,
            error,
        )
        conn.execute(
            "INSERT OR REPLACE INTO poison_event"
            " (producer, sequence, event_id, type, error, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                self._sub.producer,
                event.sequence,
                event.id,
                event.type,
                f"{type(error).__name__}: {error}",
                utc_now().isoformat(),
            ),
        )


@contextlib.contextmanager
def _with_attempt(span: AbstractContextManager[Span], attempt: int) -> Iterator[Span]:
    with span as current:
        current.set_attribute("sagawire.event.attempt", attempt)
        yield current
