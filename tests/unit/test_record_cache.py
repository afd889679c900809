"""The saga log's cache of running sagas: a read from it equals a read from the file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from coordinator.log.cache import RecordCache
from coordinator.log.records import Kind, SagaStatus, apply, new_record
from coordinator.log.sqlite import SqliteSagaLog
from tests.unit.test_saga_log import T0, new_saga, script


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
