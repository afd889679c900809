"""Event consumers: at-least-once delivery, exactly-once effect.

A :class:`Consumer` follows one producer's stream and applies each event's
reaction in a local transaction that also records the event id in the inbox and
moves the stored offset, so a crash at any instant either keeps the effect *and*
the offset, or neither, and a redelivered event is skipped. After a disconnect
it reconnects with backoff (tenacity) and resumes from its offset. The events come
through the process's transport (common/event_transport.py): the producer's gRPC
stream, or a durable NATS JetStream consumer that acknowledges a batch once
:meth:`Consumer.apply` returned, and terminates the events it recorded as poison.
JetStream redelivers an event its follower took and never acknowledged (it crashed)
after the ack wait, possibly after later ones: over NATS an event below the offset is
not taken as applied, the inbox alone decides.

Events are applied one at a time, in order, each in its own savepoint of one
transaction per batch: a happy batch is one commit. When one event fails
transiently (the store is busy, or the service is told to fail by fault
injection: the ``before_apply`` hook, drawn for each event), the events before
it are committed and only that event is retried, with backoff, for as long as it
keeps failing transiently; the events after it wait their turn (per-producer
order). A poison event (undecodable, or failing permanently) is recorded, logged
and skipped, so it never blocks the stream.

Every attempt at an event shows in its trace: a consumer span per attempt, the
failed ones with their error; a reaction that runs a saga step (``Subscription.steps``)
adds that step's attempt under it, with its outcome, as the coordinator's attempts
have theirs (:mod:`common.participant_telemetry`). A retried attempt is counted in
``step_retries``; its log line is written inside its span, so it carries the trace,
and names the saga. After a commit, each reaction's lag behind its event is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from common.errors import Transient
from common.event_transport import EventTransport, Follow, GrpcEvents
from common.participant_telemetry import (
    ERROR,
    TRANSIENT,
    ReactionStep,
    StepAttempt,
    reaction_attempt,
    reaction_retried,
)
from common.store import Connection, Store, StoreConflict, utc_now
from common.telemetry import service_metrics
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
Reaction = Callable[[Connection, events_pb2.Event], None]
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
    # The saga step each event type's reaction runs, if it runs one.
    steps: Mapping[str, ReactionStep] = field(default_factory=dict)
    # The step a reaction runs, when only what was heard before can say (inside the
    # event's transaction; None: it runs none, e.g. the first half of a join). When
    # given, it decides instead of ``steps`` once the event is applied.
    step_of: Callable[[Connection, events_pb2.Event], ReactionStep | None] | None = None

    def step_in(self, conn: Connection, event: events_pb2.Event) -> ReactionStep | None:
        """The step the reaction to ``event`` runs, asked inside its transaction."""
        if self.step_of is not None:
            return self.step_of(conn, event)
        return self.steps.get(event.type)


@dataclass(frozen=True)
class _Failed:
    """An event's attempt that failed transiently, and how long to wait before the next."""

    error: BaseException
    delay: float


def read_offset(conn: Connection, producer: str) -> int:
    """The last sequence of ``producer``'s stream handled (0: none)."""
    row = conn.execute(
        "SELECT sequence FROM consumer_offset WHERE producer = ?", (producer,)
    ).fetchone()
    return int(row[0]) if row else 0


def save_offset(conn: Connection, producer: str, sequence: int) -> None:
    """``sequence`` and everything before it in ``producer``'s stream were handled."""
    conn.execute(
        "INSERT INTO consumer_offset (producer, sequence) VALUES (?, ?)"
        " ON CONFLICT (producer) DO UPDATE SET sequence = excluded.sequence",
        (producer, sequence),
    )


class Consumer:
    """Follows one producer's EventStream and applies its reactions exactly once."""

    def __init__(
        self,
        db: Store,
        subscription: Subscription,
        consumer_name: str,
        on_commit: Callable[[], object] | None = None,
        channel_options: Sequence[tuple[str, int]] = (),
        before_apply: BeforeApply | None = None,
        identity: Identity | None = None,
        transport: EventTransport | None = None,
    ) -> None:
        self._db = db
        self._sub = subscription
        self._name = consumer_name
        self._on_commit = on_commit
        self._before_apply = before_apply
        transport = transport or GrpcEvents(
            identity or Identity.from_env(consumer_name), channel_options
        )
        # Whether an event below the offset was surely applied (delivered in order).
        self._in_order = transport.in_order
        self._subscriber = transport.follower(
            Follow(
                producer=subscription.producer,
                address=subscription.address,
                consumer=consumer_name,
                types=sorted(subscription.reactions),
                next_sequence=self._next_sequence,
                handle=self.apply,
                match_headers=subscription.match_headers,
                give_up=self.give_up,
            )
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
        return await self._db.read(lambda conn: read_offset(conn, self._sub.producer))

    async def run(self) -> None:
        """Follow the producer forever (reconnecting with backoff); ends only when cancelled."""
        await self._subscriber.run()

    async def apply(self, events: Sequence[events_pb2.Event]) -> set[str]:
        """Apply a batch as the stream delivered it: each event once, in order; returns
        once every one of them is committed (retrying the one that fails transiently),
        with the ids of those recorded as poison."""
        done = 0
        failures = 0  # in a row, of the event at ``done``
        poisoned: set[str] = set()
        while done < len(events):
            applied, reacted, failed = await self._apply_from(events, done, failures + 1, poisoned)
            if applied:
                done += applied
                failures = 0
                await self._committed(reacted)
            if failed is None:
                continue
            failures += 1
            await asyncio.sleep(failed.delay)
        return poisoned

    async def give_up(self, event: events_pb2.Event, why: str) -> None:
        """Record ``event`` as poison without reacting to it (the transport could not
        decode it, or gave up delivering it), unless it was already handled. The offset
        stays: the events before it may still come."""

        def record(conn: Connection) -> None:
            offset = read_offset(conn, self._sub.producer)
            if self._in_order and event.sequence and event.sequence <= offset:
                return
            if conn.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event.id,)).fetchone():
                return
            self._poisoned(conn, event, why)
            conn.execute(
                "INSERT INTO inbox (event_id, producer, sequence, processed_at)"
                " VALUES (?, ?, ?, ?)",
                (event.id, self._sub.producer, event.sequence, utc_now().isoformat()),
            )

        await self._db.transaction(record)

    async def _apply_from(
        self, events: Sequence[events_pb2.Event], start: int, attempt: int, poisoned: set[str]
    ) -> tuple[int, list[events_pb2.Event], _Failed | None]:
        """Apply ``events[start:]`` up to the first that fails transiently, in one
        transaction; how many were applied (and committed), the events reacted to, and
        that failure."""
        ready, failed = len(events), None
        # When each event's attempt began (its spans start there, before the fault hook).
        started: dict[str, int] = {}
        for index in range(start, len(events)):
            event = events[index]
            started[event.id] = time.time_ns()
            if self._before_apply is None:
                continue
            try:
                await self._before_apply(event)
            except Transient as refused:
                number = attempt if index == start else 1
                ready, failed = index, self._refused(event, number, started[event.id], refused)
                break
        if ready == start:
            return 0, [], failed
        batch = events[start:ready]
        poisoned_now: list[str] = []  # filled in the transaction, kept once it committed
        try:
            applied, reacted, failure = await self._db.transaction(
                lambda conn: self._apply_in(conn, batch, attempt, started, poisoned_now)
            )
        except (*_TRANSIENT, StoreConflict) as whole:  # not committed: nothing was applied
            log.warning(
                "reactions not committed, retrying producer=%s events=%d error=%s",
                self._sub.producer,
                len(batch),
                whole,
            )
            return 0, [], _Failed(whole, _backoff(attempt))
        poisoned.update(poisoned_now)
        return applied, reacted, failure or failed

    def _refused(
        self, event: events_pb2.Event, number: int, started_ns: int, error: Transient
    ) -> _Failed:
        """An attempt the fault hook refused before its transaction: it still shows in the
        event's trace, as the step's failed attempt."""
        step = self._sub.steps.get(event.type)
        try:
            with reaction_attempt(event, self._name, step, number, started_ns) as attempt:
                failed = self._retrying(event, step, attempt, number, error)
                raise error
        except Transient:
            pass
        return failed

    def _retrying(
        self,
        event: events_pb2.Event,
        step: ReactionStep | None,
        attempt: StepAttempt | None,
        number: int,
        error: BaseException,
    ) -> _Failed:
        """Record a transient failure of attempt ``number`` (inside its span): the event is
        tried again after the returned wait."""
        if attempt is not None:
            attempt.failed(TRANSIENT, error)
        reaction_retried(step)
        delay = _backoff(number)
        log.warning(
            "reaction failed transiently, retrying saga=%s step=%s producer=%s sequence=%d"
            " type=%s attempt=%d in_seconds=%.3f error=%s",
            event.subject,
            step.step if step is not None else "",
            self._sub.producer,
            event.sequence,
            event.type,
            number,
            delay,
            error,
        )
        return _Failed(error, delay)

    async def _committed(self, reacted: Sequence[events_pb2.Event]) -> None:
        now = time.time()
        metrics = service_metrics()
        for event in reacted:
            committed_at = event.time.seconds + event.time.nanos / 1e9
            metrics.reacted(self._sub.producer, self._name, event.type, now - committed_at)
        if self._on_commit is not None:
            result = self._on_commit()
            if asyncio.iscoroutine(result):
                await result

    def _apply_in(
        self,
        conn: Connection,
        events: Sequence[events_pb2.Event],
        attempt: int,
        started: Mapping[str, int],
        poisoned: list[str],
    ) -> tuple[int, list[events_pb2.Event], _Failed | None]:
        """Apply events in order up to the first that fails transiently (rolled back);
        move the offset past those applied. How many were applied, those reacted to, and
        that failure; the ids of events recorded as poison are added to ``poisoned``."""
        producer = self._sub.producer
        offset = read_offset(conn, producer)
        applied, reacted, failure = 0, [], None
        poisoned.clear()  # a retried transaction starts afresh
        for event in events:
            # In order, an event below the offset was applied: redelivered. Else the
            # inbox tells (in _apply_one).
            if event.sequence > offset or not self._in_order:
                number = attempt if applied == 0 else 1
                try:
                    if self._apply_one(conn, event, number, started[event.id], poisoned):
                        reacted.append(event)
                except _Retry as retry:
                    if not conn.in_transaction:
                        raise retry.failed.error from None  # SQLite ended the transaction
                    failure = retry.failed
                    break
                offset = max(offset, event.sequence)
            applied += 1
        if applied:
            save_offset(conn, producer, offset)
        return applied, reacted, failure

    def _apply_one(
        self,
        conn: Connection,
        event: events_pb2.Event,
        number: int,
        started_ns: int,
        poisoned: list[str],
    ) -> bool:
        """React to one event and record it in the inbox, in a savepoint of its own: a
        transient failure rolls it back and is raised (the event is retried); any other
        failure makes it poison (rolled back, recorded, skipped). Whether it reacted."""
        if conn.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event.id,)).fetchone():
            return False
        reaction = self._sub.reactions.get(event.type)
        conn.execute("SAVEPOINT event")
        if reaction is not None:
            step = self._sub.step_in(conn, event)
            failed: _Failed | None = None
            try:
                with reaction_attempt(event, self._name, step, number, started_ns) as attempt:
                    try:
                        reaction(conn, event)
                    except StoreConflict:
                        raise  # the whole transaction runs again (common/store.py)
                    except _TRANSIENT as error:
                        failed = self._retrying(event, step, attempt, number, error)
                        raise
                    except Exception as error:  # poison: recorded and skipped, below
                        if attempt is not None:
                            attempt.failed(ERROR, error)
                        self._log_poison(event, error)
                        raise
            except StoreConflict:
                raise
            except Exception as error:
                conn.execute("ROLLBACK TO event")
                if failed is not None:
                    conn.execute("RELEASE event")
                    raise _Retry(failed) from error
                self._poisoned(conn, event, f"{type(error).__name__}: {error}")
                poisoned.append(event.id)  # keep the stream moving
        conn.execute(
            "INSERT INTO inbox (event_id, producer, sequence, processed_at) VALUES (?, ?, ?, ?)",
            (event.id, self._sub.producer, event.sequence, utc_now().isoformat()),
        )
        conn.execute("RELEASE event")
        return reaction is not None

    def _log_poison(self, event: events_pb2.Event, error: Exception) -> None:
        log.error(
            "poison event skipped saga=%s producer=%s sequence=%d type=%s error=%s",
            event.subject,
            self._sub.producer,
            event.sequence,
            event.type,
            error,
        )

    def _poisoned(self, conn: Connection, event: events_pb2.Event, error: str) -> None:
        conn.execute(
            "INSERT INTO poison_event (producer, sequence, event_id, type, error, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (producer, sequence) DO UPDATE SET"
            " event_id = excluded.event_id, type = excluded.type, error = excluded.error,"
            " recorded_at = excluded.recorded_at",
            (
                self._sub.producer,
                event.sequence,
                event.id,
                event.type,
                error,
                utc_now().isoformat(),
            ),
        )


class _Retry(Exception):
    """A reaction failed transiently: its savepoint is rolled back and it is retried."""

    def __init__(self, failed: _Failed) -> None:
        super().__init__(str(failed.error))
        self.failed = failed
