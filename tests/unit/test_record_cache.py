"""The saga log's in-memory records: a read from the cache equals a read from the file,
and a saga a run drives is read from the run's own record (pinned), the one copy."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from common.breakers import BreakerBoard, BreakerSettings
from common.policy import CallPolicy
from contract.definitions import load_definitions
from coordinator.engine.runner import SagaRunner
from coordinator.log.cache import RecordCache
from coordinator.log.records import (
    Change,
    Kind,
    SagaRecord,
    SagaStatus,
    StepStatus,
    Transition,
    apply,
    new_record,
)
from coordinator.log.saga_log import LiveRecord, settles
from coordinator.log.sqlite import SqliteSagaLog
from protos.sagawire.v1 import participant_pb2
from tests.unit.fakes import FakeClock, FakeParticipants
from tests.unit.test_runner import DEFINITIONS, runner_on, start
from tests.unit.test_saga_log import T0, new_saga, script

_T = TypeVar("_T")


async def test_a_cached_saga_reads_the_same_as_the_file_after_every_write(
    tmp_path: Path,
) -> None:
    saga_log = SqliteSagaLog(tmp_path / "log.db", synchronous="NORMAL")
    await saga_log.open()
    try:
        record, _ = await saga_log.create(new_saga())
        assert await saga_log.load(record.saga_id) == record  # read once: cached from now
        for change in script(T0)[:-1]:
            await saga_log.append_many(record.saga_id, [change])
            cached = await saga_log.load(record.saga_id)
            fresh = SqliteSagaLog(tmp_path / "log.db", synchronous="NORMAL")
            await fresh.open()
            try:
                assert cached == await fresh.load(record.saga_id)
            finally:
                await fresh.close()
    finally:
        await saga_log.close()


def test_a_write_during_a_read_keeps_the_read_out_of_the_cache() -> None:
    cache = RecordCache()
    record = new_record(new_saga())
    change = script(T0)[0]
    after, transition = apply(record, change)
    with cache.reading(record.saga_id) as keep:
        cache.written(record.saga_id, [change], [transition])  # landed while reading
        keep(record)  # the read may predate that write
    assert cache.get(record.saga_id) is None
    with cache.reading(record.saga_id) as keep:
        keep(after)
    assert cache.get(record.saga_id) == after


def test_a_write_that_does_not_follow_the_cached_version_drops_the_saga() -> None:
    cache = RecordCache()
    record = new_record(new_saga())
    with cache.reading(record.saga_id) as keep:
        keep(record)
    first, second = script(T0)[:2]
    after_first, _ = apply(record, first)
    _, t2 = apply(after_first, second)
    cache.written(record.saga_id, [second], [t2])  # the first write was never seen
    assert cache.get(record.saga_id) is None


def test_ended_sagas_leave_and_the_cache_stays_bounded() -> None:
    cache = RecordCache(size=2)
    records = [new_record(new_saga()) for _ in range(3)]
    for record in records:
        with cache.reading(record.saga_id) as keep:
            keep(record)
    assert len(cache) == 2 and cache.get(records[0].saga_id) is None  # least recent out
    last = script(T0)[-1]
    assert last.kind is Kind.SAGA_COMPENSATED and last.saga_status is SagaStatus.COMPENSATED
    ended, transition = apply(records[2], last)
    cache.written(records[2].saga_id, [last], [transition])
    assert cache.get(records[2].saga_id) is None
    with cache.reading(ended.saga_id) as keep:
        keep(ended)
    assert cache.get(ended.saga_id) is None


def test_a_read_of_many_is_kept_only_if_nothing_was_written_meanwhile() -> None:
    cache = RecordCache()
    records = [new_record(new_saga()) for _ in range(3)]
    other = new_record(new_saga())
    change = script(T0)[0]
    _, transition = apply(other, change)
    with cache.reading_many() as keep:
        cache.written(other.saga_id, [change], [transition])  # any saga, while reading
        keep(records)
    assert all(cache.get(r.saga_id) is None for r in records)
    with cache.reading_many() as keep:
        keep(records)
    assert [cache.get(r.saga_id) for r in records] == records


def test_the_writers_planned_record_is_taken_only_from_the_cached_version() -> None:
    cache = RecordCache()
    record = new_record(new_saga())
    with cache.reading(record.saga_id) as keep:
        keep(record)
    first, second = script(T0)[:2]
    planned, t1 = apply(record, first)
    marked = replace(planned, data=b"planned")  # tells which record the cache kept
    cache.written(record.saga_id, [first], [t1], marked)
    assert cache.get(record.saga_id) is marked
    # Planned against the version before ``first``: the cache applies ``second`` itself.
    stale, _ = apply(record, second)
    expected, t2 = apply(marked, second)
    cache.written(record.saga_id, [second], [t2], replace(stale, data=b"stale"))
    assert cache.get(record.saga_id) == expected


# -- a run's own record: pinned, the one copy ------------------------------------------


def test_a_write_is_shown_once_it_returned_and_never_ahead_of_one_before_it() -> None:
    record = new_record(new_saga())
    first, second = script(T0)[:2]
    live = LiveRecord(record)
    live.apply(first)
    with ExitStack() as durable:
        durable.enter_context(live.writing())  # a durable write in flight
        after_first = live.record
        live.apply(second)
        with live.writing():  # a deferred one, queued at once
            pass
        # Shown, it would show the durable change before it is on disk.
        assert live.visible is record
    assert live.visible is live.record and live.record == apply(after_first, second)[0]
    live.apply(script(T0)[2])
    with pytest.raises(OSError), live.writing():
        raise OSError("disk full")
    assert live.visible is not live.record  # a write that failed shows nothing


def test_a_pinned_saga_is_read_from_its_runs_record_and_the_cache_keeps_no_copy() -> None:
    cache = RecordCache(size=1)
    record = new_record(new_saga())
    with cache.reading(record.saga_id) as keep:
        keep(record)  # read before its run started: a copy of the cache's own
    live = LiveRecord(record)
    change = script(T0)[0]
    with cache.pinned(live):
        live.apply(change)
        with live.writing():
            cache.forget(record.saga_id)  # what a write queued for later does
        assert cache.get(record.saga_id) is live.visible is live.record
        # A write the run made is not applied again, and a read does not replace it.
        _, transition = apply(record, change)
        cache.written(record.saga_id, [change], [transition])
        with cache.reading(record.saga_id) as keep:
            keep(record)
        assert cache.get(record.saga_id) is live.record
        # Never evicted: other sagas read fill the cache around it.
        for other in [new_record(new_saga()) for _ in range(3)]:
            with cache.reading(other.saga_id) as keep:
                keep(other)
        assert len(cache) == 1 and cache.get(record.saga_id) is live.record
        with pytest.raises(RuntimeError), cache.pinned(LiveRecord(record)):
            pass  # one run, one record
    # Unpinned: not kept (its last deferred write may never reach the file).
    assert cache.get(record.saga_id) is None


class _Held(FakeParticipants):
    """Holds ``step``'s execute until ``let_go`` is set (``reached`` says it got there)."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step
        self.reached = asyncio.Event()
        self.let_go = asyncio.Event()

    async def execute(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply:
        if request.step == self.step:
            self.reached.set()
            await self.let_go.wait()
        return await super().execute(participant, request, deadline)


class _SlowToSettle(SqliteSagaLog):
    """Holds a write that settles a saga until ``let_go`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.settling = asyncio.Event()
        self.let_go = asyncio.Event()

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        if any(settles(c) for c in changes):
            self.settling.set()
            await self.let_go.wait()
        return await super().append_many(saga_id, changes, planned)


async def _read_fresh(path: Path, saga_id: str) -> SagaRecord | None:
    fresh = SqliteSagaLog(path, synchronous="NORMAL")
    await fresh.open()
    try:
        return await fresh.load(saga_id)
    finally:
        await fresh.close()


class _FileReads:
    """Counts the reads of a SQLite log's file (those its cache did not serve)."""

    def __init__(self, saga_log: SqliteSagaLog, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = saga_log.db.read

        async def counted(work: Callable[[sqlite3.Connection], _T]) -> _T:
            self.count += 1
            return await read(work)

        monkeypatch.setattr(saga_log.db, "read", counted)


async def test_a_running_saga_is_read_from_its_run_and_its_outcome_once_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    saga_log = _SlowToSettle(path)
    await saga_log.open()
    file_reads = _FileReads(saga_log, monkeypatch)
    definition = DEFINITIONS.sagas["place_order"]
    participants = _Held("charge_payment")
    clock = FakeClock()
    runner = runner_on(saga_log, participants, clock)
    try:
        record = await start(saga_log, definition, clock())
        run = asyncio.create_task(runner.run(record))
        await participants.reached.wait()
        # Deferred writes are shown at once: the charge's intent, queued, maybe not on disk.
        during = await saga_log.load(record.saga_id)
        assert during is not None and during is await saga_log.load(record.saga_id)
        assert during.step("create_order").status is StepStatus.SUCCEEDED
        assert during.step("charge_payment").attempts[-1].outcome is None
        assert file_reads.count == 0  # served from the run's record: no read of the file
        participants.let_go.set()
        await saga_log.settling.wait()
        # The outcome is being written: not told before it is on disk.
        before = await saga_log.load(record.saga_id)
        assert before is not None and before.status is SagaStatus.RUNNING
        assert file_reads.count == 0
        saga_log.let_go.set()
        settled = await run
        assert settled.status is SagaStatus.COMPLETED
        # The run is over: the saga is read from the file, which agrees with the run.
        after = await saga_log.load(record.saga_id)
        assert file_reads.count == 1 and after == settled
    finally:
        saga_log.let_go.set()
        participants.let_go.set()
        await saga_log.close()
    assert await _read_fresh(path, record.saga_id) == settled


async def test_a_choreographed_run_holds_the_logs_record_and_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The observer writes a choreographed saga too, so its run keeps no version of its
    # own: after each write it has the log's, the very record the log's cache serves.
    saga_log = SqliteSagaLog(tmp_path / "log.db")
    await saga_log.open()
    file_reads = _FileReads(saga_log, monkeypatch)
    definitions = load_definitions(mode="choreography")
    definition = definitions.sagas["place_order"]
    clock = FakeClock()
    policy = CallPolicy(BreakerBoard(BreakerSettings(minimum_calls=1_000_000)))
    runner = SagaRunner(saga_log, definitions, FakeParticipants(), policy, clock=clock)
    try:
        record = await start(saga_log, definition, clock())
        started = await runner.run(record)  # the first step; the services carry the rest
        assert started.status is SagaStatus.RUNNING
        assert started.step("create_order").status is StepStatus.SUCCEEDED
        assert started is await saga_log.load(record.saga_id)  # one record, not two
        assert file_reads.count == 0
    finally:
        await saga_log.close()
    assert await _read_fresh(tmp_path / "log.db", record.saga_id) == started
