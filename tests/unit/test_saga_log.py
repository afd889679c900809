"""The saga log contract: one suite, run against every adapter (STYLE rule 5)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from common.errors import NotFound
from coordinator.log.postgres import PostgresSagaLog
from coordinator.log.records import (
    AttemptChange,
    AttemptOutcome,
    Change,
    Direction,
    ErrorDetail,
    Failure,
    Kind,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
    new_record,
)
from coordinator.log.saga_log import (
    IdempotencyConflict,
    InMemorySagaLog,
    LiveRecord,
    SagaFilter,
    SagaLog,
    StatusConflict,
)
from coordinator.log.sqlite import SqliteSagaLog
from tests.postgres_support import POSTGRES_URL, fresh_schema

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
STEPS = ("create_order", "reserve_stock", "charge_payment")


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def saga_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaLog]:
    async with AsyncExitStack() as stack:
        log: SagaLog
        if request.param == "memory":
            log = InMemorySagaLog()
        elif request.param == "sqlite":
            log = SqliteSagaLog(tmp_path / "log.db", synchronous="NORMAL")
        else:
            log = PostgresSagaLog(POSTGRES_URL, await stack.enter_async_context(fresh_schema()))
        await log.open()
        stack.push_async_callback(log.close)
        yield log


def new_saga(at: datetime = T0, key: str = "", request_hash: str = "h1") -> NewSaga:
    return NewSaga(
        saga_id=str(uuid.uuid4()),
        definition="place_order",
        mode="orchestration",
        data=b"\x01\x02",
        step_names=STEPS,
        created_at=at,
        deadline=at + timedelta(seconds=30),
        idempotency_key=key,
        request_hash=request_hash,
    )


def script(at: datetime) -> list[Change]:
    """A saga's life: two attempts, one failing, a rejection, then compensation."""
    tick = iter(at + timedelta(milliseconds=i) for i in range(1, 100))
    execute, compensate = Phase.EXECUTE, Phase.COMPENSATE
    error = ErrorDetail("UNAVAILABLE", "", "down")
    rejection = ErrorDetail("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", "too poor")
    return [
        Change(Kind.STEP_STARTED, next(tick), "create_order", AttemptChange(execute, 1),
               step_status=StepStatus.RUNNING),
        Change(Kind.STEP_ATTEMPT_FAILED, next(tick), "create_order",
               AttemptChange(execute, 1, AttemptOutcome.TRANSIENT, error), detail="transient"),
        Change(Kind.STEP_STARTED, next(tick), "create_order", AttemptChange(execute, 2)),
        Change(Kind.STEP_SUCCEEDED, next(tick), "create_order",
               AttemptChange(execute, 2, AttemptOutcome.OK), step_status=StepStatus.SUCCEEDED,
               result=b"result"),
        Change(Kind.STEP_STARTED, next(tick), "reserve_stock", AttemptChange(execute, 1),
               step_status=StepStatus.RUNNING),
        Change(Kind.STEP_STARTED, next(tick), "charge_payment", AttemptChange(execute, 1),
               step_status=StepStatus.RUNNING),
        Change(Kind.STEP_REJECTED, next(tick), "charge_payment",
               AttemptChange(execute, 1, AttemptOutcome.REJECTED, rejection),
               step_status=StepStatus.REJECTED),
        Change(Kind.SAGA_COMPENSATING, next(tick), saga_status=SagaStatus.COMPENSATING,
               direction=Direction.BACKWARD, interrupt_open_attempts=True,
               failure=Failure("charge_payment", "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS",
                               "too poor")),
        Change(Kind.COMPENSATION_STARTED, next(tick), "reserve_stock",
               AttemptChange(compensate, 1), step_status=StepStatus.COMPENSATING),
        Change(Kind.COMPENSATION_DONE, next(tick), "reserve_stock",
               AttemptChange(compensate, 1, AttemptOutcome.OK), step_status=StepStatus.COMPENSATED),
        Change(Kind.SAGA_NEEDS_ATTENTION, next(tick), saga_status=SagaStatus.NEEDS_ATTENTION),
        Change(Kind.SAGA_RETRIED, next(tick), saga_status=SagaStatus.COMPENSATING,
               next_round=True, require_status=frozenset({SagaStatus.NEEDS_ATTENTION})),
        Change(Kind.SAGA_COMPENSATED, next(tick), saga_status=SagaStatus.COMPENSATED),
    ]  # fmt: skip


async def test_create_logs_the_saga_with_pending_steps(saga_log: SagaLog) -> None:
    record, created = await saga_log.create(new_saga())
    assert created
    loaded = await saga_log.load(record.saga_id)
    assert loaded == record
    assert [s.status for s in record.steps] == [StepStatus.PENDING] * 3
    (started,) = await saga_log.history(record.saga_id)
    assert (started.seq, started.kind, started.status) == (1, Kind.SAGA_STARTED, "running")
    assert await saga_log.load(str(uuid.uuid4())) is None


async def test_create_writes_the_first_changes_with_the_saga(saga_log: SagaLog) -> None:
    first = script(T0)[:1]  # create_order's first attempt is logged with the saga
    record, created = await saga_log.create(new_saga(key="k-1"), then=first)
    assert created
    expected, _ = apply(new_record(new_saga()), first[0])
    assert record.step("create_order") == expected.step("create_order")
    assert await saga_log.load(record.saga_id) == record
    kinds = [t.kind for t in await saga_log.history(record.saga_id)]
    assert kinds == [Kind.SAGA_STARTED, Kind.STEP_STARTED]
    # The same key again: the saga is found, and nothing more is written.
    again, created_again = await saga_log.create(new_saga(key="k-1"), then=first)
    assert not created_again and again == record
    assert len(await saga_log.history(record.saga_id)) == 2


async def test_an_idempotency_key_finds_the_same_saga(saga_log: SagaLog) -> None:
    first, created = await saga_log.create(new_saga(key="k-1"))
    again, created_again = await saga_log.create(new_saga(key="k-1"))
    assert created and not created_again
    assert again.saga_id == first.saga_id
    with pytest.raises(IdempotencyConflict):
        await saga_log.create(new_saga(key="k-1", request_hash="other"))
    assert len(await saga_log.list_sagas(None, None, 10)) == 1
    # Found by its key alone too (a retry refused at a door), and only by its request.
    assert await saga_log.find("k-1", new_saga().request_hash) == first
    assert await saga_log.find("k-2", new_saga().request_hash) is None
    assert await saga_log.find("", new_saga().request_hash) is None
    with pytest.raises(IdempotencyConflict):
        await saga_log.find("k-1", "other")


async def test_load_after_appends_equals_apply(saga_log: SagaLog) -> None:
    record, _ = await saga_log.create(new_saga())
    expected: SagaRecord = record
    transitions = []
    for change in script(T0):
        expected, transition = apply(expected, change)
        transitions.append(transition)
        assert await saga_log.append(record.saga_id, change) == transition
    assert await saga_log.load(record.saga_id) == expected
    assert (await saga_log.history(record.saga_id))[1:] == transitions
    assert await saga_log.history(record.saga_id, after_seq=13) == transitions[-1:]
    charge = expected.step("charge_payment")
    assert charge.attempts[0].error == ErrorDetail(
        "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", "too poor"
    )
    reserve = expected.step("reserve_stock")
    assert [a.outcome for a in reserve.attempts] == [AttemptOutcome.INTERRUPTED, AttemptOutcome.OK]
    assert expected.round == 1 and expected.status is SagaStatus.COMPENSATED
    assert expected.finished_at is not None


async def test_append_many_equals_appending_one_by_one(saga_log: SagaLog) -> None:
    record, _ = await saga_log.create(new_saga())
    expected: SagaRecord = record
    transitions = []
    changes = script(T0)
    for change in changes:
        expected, transition = apply(expected, change)
        transitions.append(transition)
    heard = []
    with saga_log.listen(record.saga_id) as listener:
        assert await saga_log.append_many(record.saga_id, changes[:5]) == transitions[:5]
        heard.append(listener.status)
        assert await saga_log.append_many(record.saga_id, []) == []
        assert await saga_log.append_many(record.saga_id, changes[5:]) == transitions[5:]
        heard.append(listener.status)
    assert heard == [SagaStatus.RUNNING, SagaStatus.COMPENSATED]
    assert await saga_log.load(record.saga_id) == expected
    assert (await saga_log.history(record.saga_id))[1:] == transitions


async def test_appends_written_later_keep_their_order_and_reads_see_them(
    saga_log: SagaLog,
) -> None:
    # What append_later queues is applied in call order, among waited-for appends, and
    # every read called after it sees it (the SQLite log has not committed it yet).
    record, _ = await saga_log.create(new_saga())
    changes = script(T0)
    expected: SagaRecord = record
    transitions = []
    for change in changes:
        expected, transition = apply(expected, change)
        transitions.append(transition)
    await saga_log.append_later(record.saga_id, changes[:2])
    await saga_log.append_later(record.saga_id, changes[2:4])
    assert await saga_log.load(record.saga_id) == apply_all(record, changes[:4])
    await saga_log.append_later(record.saga_id, changes[4:7])
    assert await saga_log.append(record.saga_id, changes[7]) == transitions[7]
    await saga_log.append_later(record.saga_id, changes[8:10])
    assert (await saga_log.history(record.saga_id))[1:] == transitions[:10]
    assert (await saga_log.list_sagas(None, None, 10))[0].status is SagaStatus.COMPENSATING
    assert await saga_log.unfinished() == [record.saga_id]
    # A change that settles the saga is durable when append_later returns, and told.
    with saga_log.listen(record.saga_id) as listener:
        await saga_log.append_later(record.saga_id, changes[10:11])
        assert listener.status is SagaStatus.NEEDS_ATTENTION
    await saga_log.append_many(record.saga_id, changes[11:])
    assert await saga_log.load(record.saga_id) == expected


async def test_a_pinned_saga_reads_as_its_run_shows_it(saga_log: SagaLog) -> None:
    # Whether an adapter serves reads from the run's record (SQLite) or from its store
    # (the default), a read shows what the run's writes returned, and after the run the
    # store agrees.
    record, _ = await saga_log.create(new_saga())
    changes = script(T0)
    live = LiveRecord(record)
    with saga_log.pin(live):
        for batch, later in ((changes[:3], True), (changes[3:5], False), (changes[5:7], True)):
            for change in batch:
                live.apply(change)
            with live.writing():
                if later:
                    await saga_log.append_later(record.saga_id, batch)
                else:
                    await saga_log.append_many(record.saga_id, batch)
            assert await saga_log.load(record.saga_id) == live.visible == live.record
    assert live.record == apply_all(record, changes[:7])
    assert await saga_log.load(record.saga_id) == live.record
    assert (await saga_log.history(record.saga_id))[-1].seq == live.record.last_seq


async def test_a_write_queued_for_later_reaches_the_file_before_close(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    first = SqliteSagaLog(path, synchronous="NORMAL")
    await first.open()
    record, _ = await first.create(new_saga())
    changes = script(T0)[:4]
    with first.listen(record.saga_id) as listener:
        await first.append_later(record.saga_id, changes)
        await asyncio.wait_for(listener.changed.wait(), 10)  # woken once it is on disk
    assert first.waited == 1  # only the saga's birth was waited for
    await first.append_later(record.saga_id, script(T0)[4:6])
    await first.close()
    again = SqliteSagaLog(path, synchronous="NORMAL")
    await again.open()
    try:
        assert await again.load(record.saga_id) == apply_all(record, script(T0)[:6])
    finally:
        await again.close()


async def test_a_write_queued_for_later_that_fails_stops_the_sagas_next_append(
    tmp_path: Path,
) -> None:
    saga_log = SqliteSagaLog(tmp_path / "log.db", synchronous="NORMAL")
    await saga_log.open()
    try:
        record, _ = await saga_log.create(new_saga())
        changes = script(T0)
        # Applying the second change fails in the writer thread (a record the file cannot
        # take: here, a saga the log does not hold), after append_later returned.
        await saga_log.append_later("no-such-saga", changes[:1])
        await saga_log.append_later(record.saga_id, changes[:1])
        assert await saga_log.load(record.saga_id) == apply_all(record, changes[:1])
        # The failed saga's next write raises the error without writing anything...
        writes = saga_log.db.writes
        with pytest.raises(NotFound):
            await saga_log.append("no-such-saga", changes[1])
        assert saga_log.db.writes == writes
        # ...once: the one after is written (and fails on its own here).
        with pytest.raises(NotFound):
            await saga_log.append("no-such-saga", changes[1])
        assert saga_log.db.writes == writes + 1
    finally:
        await saga_log.close()


def apply_all(record: SagaRecord, changes: list[Change]) -> SagaRecord:
    for change in changes:
        record, _ = apply(record, change)
    return record


async def test_append_many_writes_all_or_nothing(saga_log: SagaLog) -> None:
    record, _ = await saga_log.create(new_saga())
    changes = script(T0)
    # The retry requires needs_attention, which the batch never reaches: nothing is written.
    batch = [changes[0], changes[11]]
    with pytest.raises(StatusConflict):
        await saga_log.append_many(record.saga_id, batch)
    assert await saga_log.load(record.saga_id) == record
    assert len(await saga_log.history(record.saga_id)) == 1
    with pytest.raises(NotFound):
        await saga_log.append_many(str(uuid.uuid4()), changes[:1])


async def test_a_required_status_is_checked(saga_log: SagaLog) -> None:
    record, _ = await saga_log.create(new_saga())
    retry = Change(
        Kind.SAGA_RETRIED,
        T0,
        saga_status=SagaStatus.COMPENSATING,
        require_status=frozenset({SagaStatus.NEEDS_ATTENTION}),
    )
    with pytest.raises(StatusConflict, match="is running, not needs_attention"):
        await saga_log.append(record.saga_id, retry)
    assert len(await saga_log.history(record.saga_id)) == 1
    with pytest.raises(NotFound):
        await saga_log.append(str(uuid.uuid4()), retry)


async def test_listing_is_newest_first_paged_and_filtered(saga_log: SagaLog) -> None:
    ids = []
    for i in range(5):
        record, _ = await saga_log.create(new_saga(at=T0 + timedelta(seconds=i)))
        ids.append(record.saga_id)
    done = Change(Kind.SAGA_COMPLETED, T0, saga_status=SagaStatus.COMPLETED)
    await saga_log.append(ids[1], done)
    page = await saga_log.list_sagas(None, None, 2)
    assert [r.saga_id for r in page] == [ids[4], ids[3]]
    rest = await saga_log.list_sagas(None, (page[-1].created_at, page[-1].saga_id), 10)
    assert [r.saga_id for r in rest] == [ids[2], ids[1], ids[0]]
    completed = await saga_log.list_sagas(SagaStatus.COMPLETED, None, 10)
    assert [r.saga_id for r in completed] == [ids[1]]
    assert await saga_log.unfinished() == [ids[0], ids[2], ids[3], ids[4]]


async def test_listing_and_counting_by_definition_mode_and_time(saga_log: SagaLog) -> None:
    """The console's filters: a definition, a mode, a time range (after inclusive,
    before exclusive); counts by status take the same filter."""
    made = []
    for i, (definition, mode) in enumerate(
        [("place_order", "orchestration"), ("place_order", "choreography"),
         ("return_order", "orchestration"), ("place_order", "orchestration")]
    ):  # fmt: skip
        new = dataclasses.replace(
            new_saga(at=T0 + timedelta(seconds=i)), definition=definition, mode=mode
        )
        made.append((await saga_log.create(new))[0].saga_id)
    done = Change(Kind.SAGA_COMPLETED, T0, saga_status=SagaStatus.COMPLETED)
    await saga_log.append(made[3], done)

    async def listed(where: SagaFilter, status: SagaStatus | None = None) -> list[str]:
        return [r.saga_id for r in await saga_log.list_sagas(status, None, 10, where)]

    assert await listed(SagaFilter(definition="place_order")) == [made[3], made[1], made[0]]
    assert await listed(SagaFilter(mode="choreography")) == [made[1]]
    window = SagaFilter(
        created_after=T0 + timedelta(seconds=1), created_before=T0 + timedelta(seconds=3)
    )
    assert await listed(window) == [made[2], made[1]]
    orchestrated = SagaFilter(definition="place_order", mode="orchestration")
    assert await listed(orchestrated, SagaStatus.COMPLETED) == [made[3]]
    page = await saga_log.list_sagas(None, (T0 + timedelta(seconds=3), made[3]), 10, orchestrated)
    assert [r.saga_id for r in page] == [made[0]]
    assert await saga_log.count_sagas() == {SagaStatus.RUNNING: 3, SagaStatus.COMPLETED: 1}
    assert await saga_log.count_sagas(orchestrated) == {
        SagaStatus.RUNNING: 1,
        SagaStatus.COMPLETED: 1,
    }
    assert await saga_log.count_sagas(SagaFilter(definition="none")) == {}


async def test_overdue_names_unfinished_sagas_of_the_mode_past_their_deadline(
    saga_log: SagaLog,
) -> None:
    def saga(at: datetime, mode: str) -> NewSaga:
        return dataclasses.replace(new_saga(at=at), mode=mode)

    late, ended, other_mode, on_time = (
        saga(T0, "choreography"),
        saga(T0 + timedelta(seconds=1), "choreography"),
        saga(T0 + timedelta(seconds=2), "orchestration"),
        saga(T0 + timedelta(seconds=20), "choreography"),
    )
    for new in (on_time, late, ended, other_mode):
        await saga_log.create(new)
    done = Change(Kind.SAGA_COMPLETED, T0, saga_status=SagaStatus.COMPLETED)
    await saga_log.append(ended.saga_id, done)
    now = T0 + timedelta(seconds=33)  # past the first three deadlines (created + 30 s)
    assert await saga_log.overdue("choreography", now) == [late.saga_id]
    assert await saga_log.overdue("orchestration", now) == [other_mode.saga_id]
    # A deadline equal to now counts as passed, and an aware time in another zone is compared
    # as the instant it is.
    at_deadline = on_time.deadline.astimezone(timezone(timedelta(hours=-5)))
    assert await saga_log.overdue("choreography", at_deadline) == [late.saga_id, on_time.saga_id]
    assert await saga_log.overdue("choreography", T0) == []


async def test_load_unfinished_reads_every_running_saga_whole_oldest_first(
    saga_log: SagaLog,
) -> None:
    changes = script(T0)
    expected: list[SagaRecord] = []
    for i, upto in enumerate([4, 0, 8, len(changes)]):  # the last one ends compensated
        record, _ = await saga_log.create(new_saga(at=T0 + timedelta(seconds=i)))
        for change in changes[:upto]:
            record, _ = apply(record, change)
            await saga_log.append(record.saga_id, change)
        if record.status is not SagaStatus.COMPENSATED:
            expected.append(record)
    loaded = await saga_log.load_unfinished()
    assert loaded == expected
    assert [r.step("create_order").result for r in loaded] == [b"result", b"", b"result"]
    assert [len(r.step("charge_payment").attempts) for r in loaded] == [0, 0, 1]


async def test_listeners_hear_each_change_with_its_status(saga_log: SagaLog) -> None:
    record, _ = await saga_log.create(new_saga())
    with saga_log.listen(record.saga_id) as listener:
        change = Change(Kind.SAGA_COMPLETED, T0, saga_status=SagaStatus.COMPLETED)
        await saga_log.append(record.saga_id, change)
        await asyncio.wait_for(listener.changed.wait(), 5)
        assert listener.status is SagaStatus.COMPLETED
        saga_log.wake_all()
        assert listener.woken


async def test_finished_sagas_are_told_then_pruned_after_the_window(saga_log: SagaLog) -> None:
    """Retention: only a finished saga whose participants were told leaves the log, and
    only once it finished before the cutoff; a saga that needs attention never does."""
    done, compensated, stuck, running = [
        (await saga_log.create(new_saga(at=T0 + timedelta(seconds=i), key=f"k-{i}")))[0]
        for i in range(4)
    ]
    at = T0 + timedelta(minutes=1)
    await saga_log.append(
        done.saga_id, Change(Kind.SAGA_COMPLETED, at, saga_status=SagaStatus.COMPLETED)
    )
    later = at + timedelta(minutes=1)
    await saga_log.append(
        compensated.saga_id,
        Change(Kind.SAGA_COMPENSATED, later, saga_status=SagaStatus.COMPENSATED),
    )
    await saga_log.append(
        stuck.saga_id, Change(Kind.SAGA_NEEDS_ATTENTION, at, saga_status=SagaStatus.NEEDS_ATTENTION)
    )
    # Oldest finish first, and nothing unfinished.
    assert await saga_log.finished_untold(10) == [
        (done.saga_id, "place_order"),
        (compensated.saga_id, "place_order"),
    ]
    assert await saga_log.finished_untold(1) == [(done.saga_id, "place_order")]
    # Not told yet: kept, however old.
    assert await saga_log.prune_finished(later + timedelta(days=365), 10) == 0
    await saga_log.mark_told([done.saga_id, compensated.saga_id])
    assert await saga_log.finished_untold(10) == []
    # Told: each goes once it finished before the cutoff, one batch at a time.
    assert await saga_log.prune_finished(at, 10) == 0
    assert await saga_log.prune_finished(later, 10) == 1
    assert await saga_log.load(done.saga_id) is None
    assert await saga_log.history(done.saga_id) == []
    assert await saga_log.load(compensated.saga_id) is not None
    assert await saga_log.prune_finished(later + timedelta(seconds=1), 10) == 1
    remaining = {r.saga_id for r in await saga_log.list_sagas(None, None, 10)}
    assert remaining == {stuck.saga_id, running.saga_id}
    # A pruned saga's idempotency key is free again.
    again, created = await saga_log.create(new_saga(key="k-0", request_hash="other"))
    assert created and again.saga_id != done.saga_id
