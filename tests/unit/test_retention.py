"""Retention's store logic against real SQLite files: what each table lets go of, when,
and why a deleted barrier row can no longer matter (the horizon)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from common import barrier, inbox, outbox, saga_ids
from common.config import RetentionSettings, ServiceSettings, load
from common.errors import SagaExpired
from common.retention import Pruning, Retention, delete_oldest, service_tasks
from common.store import Database

SCHEMA = barrier.SCHEMA + outbox.SCHEMA + inbox.SCHEMA
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "service.db", SCHEMA, synchronous="NORMAL")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def saga_at(when: datetime) -> str:
    return saga_ids.new_saga_id(int(when.timestamp() * 1000))


def count(conn: sqlite3.Connection, sql: str, *args: object) -> int:
    return int(conn.execute(sql, args).fetchone()[0])


def test_saga_ids_carry_their_creation_time() -> None:
    made = saga_ids.new_saga_id()
    parsed = uuid.UUID(made)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    created = saga_ids.created_at(made)
    assert created is not None and abs(created - datetime.now(UTC)) < timedelta(seconds=5)
    assert saga_ids.created_at(saga_at(NOW)) == NOW
    # Ids from before UUIDv7 ids, and anything else, carry no time.
    assert saga_ids.created_at(str(uuid.uuid4())) is None
    assert saga_ids.created_at("not-a-uuid") is None
    # Time-ordered: a later saga sorts after an earlier one.
    assert saga_at(NOW) < saga_at(NOW + timedelta(milliseconds=1))


def execute(conn: sqlite3.Connection, saga_id: str, horizon: datetime | None) -> barrier.Guarded:
    def action() -> bytes:
        conn.execute("INSERT INTO inbox VALUES (?, 'effect', 0, 'x')", (str(uuid.uuid4()),))
        return b"done"

    return barrier.guarded_execute(
        conn, saga_id, "charge", action, fingerprint="f", horizon=horizon
    )


def compensate(conn: sqlite3.Connection, saga_id: str, horizon: datetime | None) -> barrier.Guarded:
    def undo(_: bytes) -> bytes:
        conn.execute("INSERT INTO inbox VALUES (?, 'undone', 0, 'x')", (str(uuid.uuid4()),))
        return b""

    return barrier.guarded_compensate(
        conn, saga_id, "charge", undo, fingerprint="f", horizon=horizon
    )


def effects(conn: sqlite3.Connection) -> int:
    return count(conn, "SELECT COUNT(*) FROM inbox WHERE producer IN ('effect', 'undone')")


async def test_the_horizon_refuses_only_steps_with_no_row_of_old_sagas(db: Database) -> None:
    horizon = NOW - 7 * DAY
    old, young, legacy = saga_at(horizon - DAY), saga_at(NOW), str(uuid.uuid4())

    def check(conn: sqlite3.Connection) -> None:
        # An old saga with no row: the execute is refused, nothing done, nothing recorded.
        with pytest.raises(SagaExpired):
            execute(conn, old, horizon)
        assert effects(conn) == 0
        assert count(conn, "SELECT COUNT(*) FROM barrier") == 0
        # ...and a compensate is a null compensation that records nothing either.
        assert compensate(conn, old, horizon).outcome is barrier.BarrierOutcome.NULL_COMPENSATION
        assert count(conn, "SELECT COUNT(*) FROM barrier") == 0
        # A young saga, or an id that carries no time, runs as before.
        assert execute(conn, young, horizon).outcome is barrier.BarrierOutcome.APPLIED
        assert execute(conn, legacy, horizon).outcome is barrier.BarrierOutcome.APPLIED
        assert effects(conn) == 2

    await db.transaction(check)

    # A saga with rows is answered from them whatever its age: needing attention for
    # weeks, its step replays and its compensation undoes.
    def ran_before(conn: sqlite3.Connection) -> None:
        assert execute(conn, old, None).outcome is barrier.BarrierOutcome.APPLIED

    def weeks_later(conn: sqlite3.Connection) -> None:
        assert execute(conn, old, horizon).outcome is barrier.BarrierOutcome.REPLAYED
        assert compensate(conn, old, horizon).outcome is barrier.BarrierOutcome.APPLIED
        assert effects(conn) == 4

    await db.transaction(ran_before)
    await db.transaction(weeks_later)


async def test_barrier_rows_go_only_after_the_saga_finished_and_the_window(
    db: Database,
) -> None:
    finished, unfinished, legacy = (
        saga_at(NOW - 30 * DAY),
        saga_at(NOW - 30 * DAY),
        str(uuid.uuid4()),
    )

    def run_all(conn: sqlite3.Connection) -> None:
        for saga_id in (finished, unfinished, legacy):
            execute(conn, saga_id, None)
            compensate(conn, saga_id, None)

    await db.transaction(run_all)
    # Told the sagas finished (the legacy id is not noted: nothing could refuse its
    # late duplicates, so its rows are kept).
    marked = await db.transaction(
        lambda conn: barrier.mark_finished(conn, [finished, legacy, finished], NOW)
    )
    assert marked == 1
    assert await db.transaction(lambda conn: barrier.mark_finished(conn, [finished], NOW)) == 0
    # Not yet past the window: kept.
    assert await db.transaction(lambda conn: barrier.prune_finished(conn, NOW, 10)) == 0
    # Past it: every row of the finished saga goes, in one statement; the others stay.
    later = NOW + timedelta(microseconds=1)
    assert await db.transaction(lambda conn: barrier.prune_finished(conn, later, 10)) == 1

    def left(conn: sqlite3.Connection) -> dict[str, int]:
        rows = conn.execute("SELECT saga_id, COUNT(*) FROM barrier GROUP BY saga_id")
        return {row[0]: row[1] for row in rows}

    assert await db.read(left) == {unfinished: 2, legacy: 2}
    assert await db.read(lambda conn: count(conn, "SELECT COUNT(*) FROM barrier_finished")) == 0

    # And a late duplicate of the pruned saga is refused by the horizon: no effect.
    def late(conn: sqlite3.Connection) -> None:
        before = effects(conn)
        with pytest.raises(SagaExpired):
            execute(conn, finished, NOW - 7 * DAY)
        assert compensate(conn, finished, NOW - 7 * DAY).outcome is (
            barrier.BarrierOutcome.NULL_COMPENSATION
        )
        assert effects(conn) == before

    await db.transaction(late)


def append_at(conn: sqlite3.Connection, when: datetime) -> str:
    event_id = outbox.append(conn, "t", "s", wrappers_pb2.StringValue(value="x"))
    conn.execute("UPDATE outbox SET time = ? WHERE event_id = ?", (when.isoformat(), event_id))
    return event_id


async def test_outbox_events_go_after_the_window_once_every_known_consumer_passed(
    db: Database,
) -> None:
    events = outbox.Outbox(db, "payment")
    now = datetime.now(UTC)  # the outbox notes when a consumer read by the real clock

    def fill(conn: sqlite3.Connection) -> None:
        for days in (10, 9, 8, 1):
            append_at(conn, now - days * DAY)

    await db.transaction(fill)
    sequences = await db.read(
        lambda conn: [r[0] for r in conn.execute("SELECT sequence FROM outbox ORDER BY sequence")]
    )
    assert sequences == [1, 2, 3, 4]
    # A consumer's stream is at 2: it was sent event 1 only.
    await events.read_notified(2, 10, reader="inventory")
    assert await events.prune(7 * DAY, 100, now) == 1
    # It moves on: the others older than the window go, never the newest.
    await events.read_notified(5, 10, reader="inventory")
    assert await events.prune(7 * DAY, 100, now) == 2
    assert await db.read(lambda conn: count(conn, "SELECT COUNT(*) FROM outbox")) == 1
    # A consumer known from before (persisted) holds events until it is silent for
    # longer than the window; then it is forgotten.
    await db.transaction(lambda conn: [append_at(conn, now - 2 * DAY) for _ in range(2)])
    held = await events.prune(timedelta(hours=1), 100, now)
    assert held == 1  # event 4 went; 5 and 6 wait for a consumer seen at 5
    stale = now + 8 * DAY
    assert await events.prune(7 * DAY, 100, stale) == 1  # forgotten: 5 goes, 6 is newest
    assert await db.read(lambda conn: count(conn, "SELECT COUNT(*) FROM outbox_reader")) == 0
    # Sequences are never reused after a prune.
    await db.transaction(lambda conn: append_at(conn, now))
    newest = await db.read(lambda conn: count(conn, "SELECT MAX(sequence) FROM outbox"))
    assert newest == 7


async def test_inbox_and_poison_rows_go_by_age_a_bounded_batch_at_a_time(db: Database) -> None:
    def fill(conn: sqlite3.Connection) -> None:
        for n in range(10):
            conn.execute(
                "INSERT INTO inbox VALUES (?, 'order', ?, ?)",
                (f"e{n}", n, (NOW - (20 - n) * DAY).isoformat()),
            )
            conn.execute(
                "INSERT INTO poison_event VALUES ('order', ?, ?, 't', 'bad', ?)",
                (n, f"p{n}", (NOW - (40 - n) * DAY).isoformat()),
            )

    await db.transaction(fill)
    older_than = NOW - 15 * DAY  # inbox rows 0..4 are older
    first = await db.transaction(
        lambda conn: delete_oldest(conn, "inbox", "processed_at", older_than, 3)
    )
    rest = await db.transaction(
        lambda conn: delete_oldest(conn, "inbox", "processed_at", older_than, 3)
    )
    none = await db.transaction(
        lambda conn: delete_oldest(conn, "inbox", "processed_at", older_than, 3)
    )
    assert (first, rest, none) == (3, 2, 0)
    poison = await db.transaction(
        lambda conn: delete_oldest(conn, "poison_event", "recorded_at", NOW - 35 * DAY, 100)
    )
    assert poison == 5


async def test_a_pass_runs_every_task_in_batches_and_survives_a_failing_one(
    db: Database,
) -> None:
    calls: list[int] = []

    async def batches(now: datetime, limit: int) -> int:
        calls.append(limit)
        return limit if len(calls) < 3 else 1  # two full batches, then a short one

    async def broken(now: datetime, limit: int) -> int:
        raise sqlite3.OperationalError("database is locked")

    job = Retention([Pruning("broken", broken), Pruning("rows", batches)], 60, 5, lambda: NOW)
    assert await job.run_pass() == {"broken": 0, "rows": 11}
    assert calls == [5, 5, 5]
    assert job.removed == {"broken": 0, "rows": 11} and job.passes == 1


async def test_a_services_tasks_prune_its_real_store(db: Database) -> None:
    settings = RetentionSettings(retention_barrier=60, retention_clock_skew=0)
    tasks = {t.name: t for t in service_tasks(db, outbox.Outbox(db, "order"), settings)}
    assert set(tasks) == {"barrier", "outbox", "inbox", "poison"}
    saga_id = saga_at(NOW - DAY)
    await db.transaction(lambda conn: execute(conn, saga_id, None))
    await db.transaction(lambda conn: barrier.mark_finished(conn, [saga_id], NOW - DAY))
    assert await tasks["barrier"].batch(NOW, 10) == 1


def test_retention_settings_take_durations_with_units() -> None:
    settings = RetentionSettings(retention_sagas="30d", retention_barrier="12h")  # type: ignore[arg-type]
    assert (settings.retention_sagas, settings.retention_barrier) == (30 * 86_400, 12 * 3_600)
    assert RetentionSettings().retention_enabled
    with pytest.raises(SystemExit, match="SAGAWIRE_RETENTION_INBOX"):
        load(ServiceSettings, retention_inbox="soon")
