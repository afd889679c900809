"""The outbox's shared tail: a read from memory equals the same read from the file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import outbox
from common.event_tail import EventTail, TailEvent
from common.store import Database
from protos.sagawire.v1 import events_pb2, order_saga_pb2

TYPES = ("order.created", "stock.reserved", "payment.charged")
MODES = ("choreography", "orchestration", None)

# One committed transaction: its events as (type, saga mode, tenant header or None).
events_of_a_commit = st.lists(
    st.tuples(st.sampled_from(TYPES), st.sampled_from(MODES), st.sampled_from(["a", "b", None])),
    max_size=3,
)
a_read = st.tuples(
    st.integers(min_value=1, max_value=40),  # from_sequence
    st.integers(min_value=1, max_value=6),  # limit
    st.frozensets(st.sampled_from(TYPES), max_size=2),
    st.sampled_from(MODES),
    st.sampled_from([{}, {"tenant": "a"}]),
)


def tail_event(sequence: int, event_type: str = TYPES[0], mode: str | None = None) -> TailEvent:
    return TailEvent(events_pb2.Event(sequence=sequence, type=event_type), mode)


def sequences(read: tuple[list[events_pb2.Event], int, bool]) -> tuple[list[int], int, bool]:
    events, scanned, complete = read
    return [e.sequence for e in events], scanned, complete


def test_a_read_stops_at_its_limit_and_says_where() -> None:
    tail = EventTail(end=0)
    tail.extend([tail_event(n) for n in (1, 2, 4, 5)], complete=True)  # 3 rolled back
    assert sequences(tail.read(2, 2, frozenset(), None, {})) == ([2, 4], 4, False)
    assert sequences(tail.read(5, 2, frozenset(), None, {})) == ([5], 5, True)
    assert sequences(tail.read(9, 2, frozenset(), None, {})) == ([], 8, True)


def test_the_tail_stays_bounded_and_knows_where_it_starts() -> None:
    tail = EventTail(end=10, size=8)
    assert not tail.covers(10) and tail.covers(11)
    tail.extend([tail_event(n) for n in range(11, 31)], complete=True)
    assert len(tail) <= 8 * 5 // 4
    assert tail.covers(tail.start) and not tail.covers(tail.start - 1)
    kept = sequences(tail.read(tail.start, 100, frozenset(), None, {}))[0]
    assert kept == list(range(tail.start, 31))


def test_a_load_cut_short_by_its_limit_restarts_the_tail_after_the_gap() -> None:
    tail = EventTail(end=0, size=4)
    tail.extend([tail_event(1)], complete=True)
    tail.extend([tail_event(n) for n in (7, 8, 9, 10)], complete=False)  # 2..6 unseen
    assert tail.start == 7 and not tail.covers(6)
    assert sequences(tail.read(7, 10, frozenset(), None, {})) == ([7, 8, 9, 10], 10, True)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    commits=st.lists(events_of_a_commit, min_size=1, max_size=12),
    reads=st.lists(a_read, min_size=1, max_size=8),
    tail_size=st.sampled_from([2, 5, 64]),
)
def test_reads_from_the_tail_equal_reads_from_the_file(
    tmp_path: Path,
    commits: list[list[tuple[str, str | None, str | None]]],
    reads: list[tuple[int, int, frozenset[str], str | None, dict[str, str]]],
    tail_size: int,
) -> None:
    asyncio.run(_compare(tmp_path, commits, reads, tail_size))


async def _compare(
    tmp_path: Path,
    commits: list[list[tuple[str, str | None, str | None]]],
    reads: list[tuple[int, int, frozenset[str], str | None, dict[str, str]]],
    tail_size: int,
) -> None:
    path = tmp_path / "tail.db"
    path.unlink(missing_ok=True)
    db = Database(path, schema=outbox.SCHEMA, synchronous="OFF")
    await db.open()
    try:
        box = outbox.Outbox(db, source="test", tail_size=tail_size)
        await box.read_notified(1, 1)  # the tail starts before the first commit
        for number, commit in enumerate(commits):
            await db.transaction(partial(_append, events=commit))
            await box.notify()
            for from_sequence, limit, types, mode, extra in reads:
                headers = {**extra, **({outbox.MODE_HEADER: mode} if mode else {})}
                every = (await box.read_batch(from_sequence, 10**6, types, headers))[0]
                for found, scanned, complete in (
                    await box.read_notified(from_sequence, limit, types, headers),
                    await box.read_batch(from_sequence, limit, types, headers),
                ):
                    # Each is every matching event up to where it stopped, in order.
                    assert found == [e for e in every if e.sequence <= scanned], number
                    assert len(found) <= limit
                    assert (found == every) if complete else scanned >= from_sequence
    finally:
        await db.close()


def _append(conn: sqlite3.Connection, events: Sequence[tuple[str, str | None, str | None]]) -> None:
    for event_type, mode, tenant in events:
        headers = {
            **({outbox.MODE_HEADER: mode} if mode else {}),
            **({"tenant": tenant} if tenant else {}),
        }
        outbox.append(conn, event_type, "saga-1", order_saga_pb2.OrderSagaData(), headers)


async def test_streams_are_served_from_memory_once_a_commit_is_read(tmp_path: Path) -> None:
    db = Database(tmp_path / "shared.db", schema=outbox.SCHEMA, synchronous="OFF")
    await db.open()
    box = outbox.Outbox(db, source="test")
    await box.read_notified(1, 10)  # a stream caught up: the tail starts here
    choreographed = [("order.created", "choreography", None), ("stock.reserved", None, None)]
    await db.transaction(partial(_append, events=choreographed))
    await box.notify()
    readers = [box.read_notified(1, 10, frozenset({t})) for t in ("order.created", TYPES[1])]
    first, second = await asyncio.gather(*readers)
    await db.close()
    # Served from memory: the file is closed, and the tail still answers.
    again = await box.read_notified(1, 10)
    assert [e.type for e in first[0]] == ["order.created"]
    assert [e.type for e in second[0]] == ["stock.reserved"]
    assert [e.sequence for e in again[0]] == [1, 2] and again[1:] == (2, True)
