"""Event consumers: at-least-once delivery, exactly-once effect.

A :class:`Consumer` follows one producer's stream. For each batch it runs the
reactions in ONE local transaction that also records every event id in the
inbox and moves the stored offset — so a crash at any instant either keeps the
effect *and* the offset, or neither, and a redelivered event is skipped. After a
disconnect it reconnects with backoff (tenacity) and resumes from its offset.

A reaction that fails transiently (the store is busy, or the service is told to
fail by fault injection: the ``before_apply`` hook) is retried with the whole batch,
with backoff, for as long as it keeps failing transiently; a poison event
(undecodable, or failing permanently) is recorded, logged and skipped, so it never
blocks the stream.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tenacity import wait_random_exponential

from common.errors import Transient
from common.retrying import attempt_then_retry
from common.store import Database, utc_now
from common.subscriber import Subscriber
from common.telemetry import consumer_span
from common.tls import Identity
from protos.sagawire.v1 import events_pb2

log = logging.getLogger(__name__)

# A reaction that fails on a busy store or an injected fault is retried, with its
# batch, for as long as it keeps failing so.
_TRANSIENT = (sqlite3.OperationalError, Transient)
_RETRY_WAIT = wait_random_exponential(multiplier=0.01, max=1.0)

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
        before_apply: Callable[[Sequence[events_pb2.Event]], Awaitable[None]] | None = None,
        identity: Identity | None = None,
    ) -> None:
        self._db = db
        self._sub = subscription
        self._name = consumer_name
        self._on_commit = on_commit
        # Runs before each attempt at a batch; may raise Transient (fault injection).
        self._before_apply = before_apply
        self._subscriber = Subscriber(
            producer=subscription.producer,
            address=subscription.address,
            consumer=consumer_name,
            types=sorted(subscription.reactions),
            next_sequence=self._next_sequence,
            handle=self._apply,
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

    async def _apply(self, events: Sequence[events_pb2.Event]) -> None:
        async def attempt(_: int) -> None:
            if self._before_apply is not None:
                await self._before_apply(events)
            await self._db.transaction(lambda conn: self._apply_in(conn, events))

        await attempt_then_retry(attempt, _TRANSIENT, _RETRY_WAIT, self._retrying)
        if self._on_commit is not None:
            result = self._on_commit()
            if asyncio.iscoroutine(result):
                await result

    def _retrying(self, attempt: int, delay: float, error: BaseException) -> None:
        log.warning(
            "reaction failed transiently, retrying producer=%s attempt=%d in_seconds=%.3f error=%s",
            self._sub.producer,
            attempt,
            delay,
            error,
        )

    def _apply_in(self, conn: sqlite3.Connection, events: Sequence[events_pb2.Event]) -> None:
        producer = self._sub.producer
        offset = _offset(conn, producer)
        for event in events:
            if event.sequence <= offset:
                continue  # redelivered below our offset: already applied
            offset = event.sequence
            seen = conn.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event.id,)).fetchone()
            if seen:
                continue
            reaction = self._sub.reactions.get(event.type)
            if reaction is not None:
                self._react(conn, reaction, event)
            conn.execute(
                "INSERT INTO inbox (event_id, producer, sequence, processed_at)"
                " VALUES (?, ?, ?, ?)",
                (event.id, producer, event.sequence, utc_now().isoformat()),
            )
        conn.execute(
            "INSERT INTO consumer_offset (producer, sequence) VALUES (?, ?)"
            " ON CONFLICT (producer) DO UPDATE SET sequence = excluded.sequence",
            (producer, offset),
        )

    def _react(self, conn: sqlite3.Connection, reaction: Reaction, event: events_pb2.Event) -> None:
        conn.execute("SAVEPOINT reaction")
        try:
            # One span per event, continuing the producer's trace (not one per stream).
            with consumer_span(event, f"{self._name} {event.type}"):
                reaction(conn, event)
        except sqlite3.OperationalError:
            raise  # transient: the whole batch is retried
        except Exception as error:  # poison: record it, skip it, keep the stream moving
            conn.execute("ROLLBACK TO reaction")
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
        conn.execute("RELEASE reaction")
