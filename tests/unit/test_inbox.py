"""common.inbox: a batch is applied event by event; only a failing event is retried.

The consumer runs against a real SQLite file (:class:`common.store.Database`) and
is handed batches directly, as its stream would hand them over. A reaction's
effect is a row in an ``effect`` table, so a second effect shows; the fault hook
stands in for fault injection.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from common import inbox
from common.errors import Transient
from common.store import Connection, Database
from common.telemetry import activated, create_telemetry
from protos.sagawire.v1 import events_pb2

EFFECTS = "CREATE TABLE effect (event_id TEXT NOT NULL, sequence INTEGER NOT NULL);"


class Faults:
    """Fails the named sequences a given number of times each, counting every draw."""

    def __init__(self, **fail: int) -> None:
        self.left = {int(k.removeprefix("seq")): n for k, n in fail.items()}
        self.draws: Counter[int] = Counter()

    async def __call__(self, event: events_pb2.Event) -> None:
        self.draws[event.sequence] += 1
        if self.left.get(event.sequence, 0) > 0:
            self.left[event.sequence] -= 1
            raise Transient(f"injected fault: event {event.sequence}")


def react(conn: Connection, event: events_pb2.Event) -> None:
    conn.execute("INSERT INTO effect VALUES (?, ?)", (event.id, event.sequence))
    if event.type == "poison":
        raise inbox.PoisonEvent("cannot be applied")


def events(*sequences: int, kind: str = "thing") -> list[events_pb2.Event]:
    return [events_pb2.Event(id=f"e-{n}", sequence=n, type=kind, subject="s") for n in sequences]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "consumer.db", inbox.SCHEMA + EFFECTS, synchronous="OFF")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def consumer(
    db: Database,
    faults: Faults | None = None,
    on_commit: Callable[[], object] | None = None,
    **reactions: inbox.Reaction,
) -> inbox.Consumer:
    subscription = inbox.Subscription(
        producer="order",
        address="127.0.0.1:1",  # never dialled: batches are handed over directly
        reactions=reactions or {"thing": react, "poison": react},
    )
    return inbox.Consumer(
        db, subscription, consumer_name="test", on_commit=on_commit, before_apply=faults
    )


async def effects(db: Database) -> list[int]:
    rows = await db.read(
        lambda c: c.execute("SELECT sequence FROM effect ORDER BY rowid").fetchall()
    )
    return [int(r[0]) for r in rows]


async def test_a_happy_batch_is_one_transaction(db: Database) -> None:
    faults = Faults()
    following = consumer(db, faults)
    await following.apply(events(1, 2, 3, 4, 5))
    assert await effects(db) == [1, 2, 3, 4, 5]
    assert await following.offset() == 5
    assert db.writes == 1
    assert faults.draws == Counter({1: 1, 2: 1, 3: 1, 4: 1, 5: 1})  # drawn per event


async def test_a_fault_on_one_event_retries_that_event_alone(db: Database) -> None:
    faults = Faults(seq3=2)
    committed: list[int] = []
    following = consumer(db, faults, on_commit=lambda: committed.append(len(committed)))
    await following.apply(events(1, 2, 3, 4, 5))
    # Every effect once, in order; the events before the failing one were committed
    # once, before it was retried; only it was drawn again.
    assert await effects(db) == [1, 2, 3, 4, 5]
    assert faults.draws == Counter({1: 1, 2: 1, 3: 3, 4: 1, 5: 1})
    assert db.writes == 2  # 1-2, then 3-5 once 3 went through
    assert len(committed) == 2
    assert await following.offset() == 5
    inboxed = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])
    assert inboxed == 5


async def test_a_reaction_failing_transiently_is_rolled_back_and_retried_alone(
    db: Database,
) -> None:
    failed: list[int] = []

    def busy_once(conn: Connection, event: events_pb2.Event) -> None:
        react(conn, event)  # its effect is written, then rolled back with its savepoint
        if event.sequence == 2 and not failed:
            failed.append(event.sequence)
            raise sqlite3.OperationalError("database is locked")

    following = consumer(db, thing=busy_once)
    await following.apply(events(1, 2, 3))
    assert await effects(db) == [1, 2, 3]
    assert failed == [2]
    assert db.writes == 2  # 1 (2 rolled back), then 2-3
    polluted = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM poison_event").fetchone())
    assert polluted[0] == 0


async def test_a_poison_event_is_recorded_and_skipped_in_the_same_transaction(
    db: Database,
) -> None:
    following = consumer(db, Faults())
    await following.apply([*events(1), *events(2, kind="poison"), *events(3)])
    assert await effects(db) == [1, 3]  # the poison event's effect rolled back
    poisoned = await db.read(
        lambda c: c.execute("SELECT sequence, type FROM poison_event").fetchall()
    )
    assert [tuple(r) for r in poisoned] == [(2, "poison")]
    assert db.writes == 1
    assert await following.offset() == 3


async def test_a_redelivered_batch_has_no_second_effect(db: Database) -> None:
    following = consumer(db, Faults(seq2=1))
    await following.apply(events(1, 2, 3))
    await following.apply(events(1, 2, 3))  # after a reconnect, from an older offset
    fresh = consumer(db, Faults())  # a restarted consumer, same store
    await fresh.apply(events(2, 3, 4))
    assert await effects(db) == [1, 2, 3, 4]


async def test_every_attempt_at_an_event_has_its_consumer_span(db: Database) -> None:
    exporter = InMemorySpanExporter()
    with activated(create_telemetry("inventory", [exporter], batch=False)):
        await consumer(db, Faults(seq2=2)).apply(events(1, 2))
    spans = [s for s in exporter.get_finished_spans() if s.name == "test thing"]
    by_event = Counter(s.attributes["sagawire.event.sequence"] for s in spans if s.attributes)
    assert by_event == Counter({1: 1, 2: 3})
    retried = [s for s in spans if s.attributes and s.attributes["sagawire.event.sequence"] == 2]
    assert [s.status.status_code for s in retried] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [s.attributes.get("sagawire.event.attempt", 1) for s in retried if s.attributes] == [
        1,
        2,
        3,
    ]
