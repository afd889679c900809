"""The barrier against a real (in-memory) SQLite connection.

Each test runs the barrier the way :class:`common.store.Database` does: inside
one ``BEGIN IMMEDIATE`` transaction that commits, or rolls back on an exception.
The "business effect" is a row in an ``effect`` table, so a second effect shows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from common import barrier
from common.errors import Aborted, BusinessRejection

_T = TypeVar("_T")


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.executescript(barrier.SCHEMA + "CREATE TABLE effect (what TEXT NOT NULL);")
    yield connection
    connection.close()


def in_transaction(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def effects(conn: sqlite3.Connection) -> list[str]:
    return [row["what"] for row in conn.execute("SELECT what FROM effect ORDER BY rowid")]


class Step:
    """An action and its compensation that write effect rows and count their runs."""

    def __init__(self, conn: sqlite3.Connection, result: bytes = b"first-result") -> None:
        self.conn = conn
        self.result = result
        self.executed = 0
        self.compensated_with: list[bytes] = []

    def action(self) -> bytes:
        self.executed += 1
        self.conn.execute("INSERT INTO effect (what) VALUES ('done')")
        return self.result

    def rejecting_action(self) -> bytes:
        self.executed += 1
        self.conn.execute("INSERT INTO effect (what) VALUES ('half-done')")
        raise BusinessRejection("INSUFFICIENT_STOCK", "only 1 left", sku="RARE")

    def compensation(self, first_result: bytes) -> bytes:
        self.compensated_with.append(first_result)
        self.conn.execute("INSERT INTO effect (what) VALUES ('undone')")
        return b""

    def execute(self, saga_id: str = "saga-1", step: str = "reserve") -> barrier.Guarded:
        return in_transaction(
            self.conn, lambda: barrier.guarded_execute(self.conn, saga_id, step, self.action)
        )

    def compensate(self, saga_id: str = "saga-1", step: str = "reserve") -> barrier.Guarded:
        return in_transaction(
            self.conn,
            lambda: barrier.guarded_compensate(self.conn, saga_id, step, self.compensation),
        )


def test_first_execute_applies_the_action(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    guarded = step.execute()
    assert guarded == barrier.Guarded(barrier.Outcome.APPLIED, result=b"first-result")
    assert effects(conn) == ["done"]
    assert barrier.was_executed(conn, "saga-1", "reserve")


def test_duplicate_execute_returns_the_first_result_without_a_second_effect(
    conn: sqlite3.Connection,
) -> None:
    step = Step(conn)
    step.execute()
    step.result = b"a-different-result"
    guarded = step.execute()
    assert guarded == barrier.Guarded(barrier.Outcome.REPLAYED, result=b"first-result")
    assert step.executed == 1
    assert effects(conn) == ["done"]


def test_the_key_is_saga_and_step(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute("saga-1", "reserve")
    assert step.execute("saga-2", "reserve").outcome is barrier.Outcome.APPLIED
    assert step.execute("saga-1", "reserve-again").outcome is barrier.Outcome.APPLIED
    assert step.executed == 3


def test_a_rejection_undoes_the_actions_writes_and_is_replayed(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    first = in_transaction(
        conn, lambda: barrier.guarded_execute(conn, "saga-1", "reserve", step.rejecting_action)
    )
    assert first.outcome is barrier.Outcome.APPLIED
    assert first.rejection is not None and first.rejection.reason == "INSUFFICIENT_STOCK"
    assert effects(conn) == []  # the savepoint rolled the half-done write back

    # A retry must not turn the recorded "no" into a "yes".
    again = step.execute()
    assert again.outcome is barrier.Outcome.REPLAYED
    assert again.rejection is not None
    assert (again.rejection.reason, again.rejection.message) == (
        "INSUFFICIENT_STOCK",
        "only 1 left",
    )
    assert step.executed == 1
    assert effects(conn) == []
    assert not barrier.was_executed(conn, "saga-1", "reserve")


def test_compensate_without_execute_is_a_recorded_null_compensation(
    conn: sqlite3.Connection,
) -> None:
    step = Step(conn)
    guarded = step.compensate()
    assert guarded.outcome is barrier.Outcome.NULL_COMPENSATION
    assert step.compensated_with == []
    assert effects(conn) == []
    phases = conn.execute("SELECT phase, outcome FROM barrier").fetchall()
    assert [tuple(row) for row in phases] == [("compensate", "null")]


def test_execute_after_a_null_compensation_is_refused(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.compensate()
    with pytest.raises(Aborted):
        step.execute()
    assert step.executed == 0
    assert effects(conn) == []
    # Refused every time, not only the first.
    with pytest.raises(Aborted):
        step.execute()


def test_compensate_undoes_the_execute_once_given_its_result(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute()
    first = step.compensate()
    second = step.compensate()
    assert first.outcome is barrier.Outcome.APPLIED
    assert second.outcome is barrier.Outcome.REPLAYED
    assert step.compensated_with == [b"first-result"]
    assert effects(conn) == ["done", "undone"]


def test_execute_after_a_real_compensation_is_refused(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute()
    step.compensate()
    with pytest.raises(Aborted):
        step.execute()
    assert step.executed == 1


def test_duplicate_null_compensation_has_no_effect(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.compensate()
    assert step.compensate().outcome is barrier.Outcome.REPLAYED
    assert step.compensated_with == []
    assert conn.execute("SELECT COUNT(*) FROM barrier").fetchone()[0] == 1


def test_compensating_a_rejected_execute_is_a_null_compensation(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    in_transaction(
        conn, lambda: barrier.guarded_execute(conn, "saga-1", "reserve", step.rejecting_action)
    )
    assert step.compensate().outcome is barrier.Outcome.NULL_COMPENSATION
    assert step.compensated_with == []
    assert effects(conn) == []


def test_a_bug_in_the_action_records_nothing(conn: sqlite3.Connection) -> None:
    """An unexpected error rolls the transaction back: a retry runs the action afresh."""
    step = Step(conn)

    def broken() -> bytes:
        conn.execute("INSERT INTO effect (what) VALUES ('partial')")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        in_transaction(conn, lambda: barrier.guarded_execute(conn, "saga-1", "reserve", broken))
    assert effects(conn) == []
    assert conn.execute("SELECT COUNT(*) FROM barrier").fetchone()[0] == 0
    assert step.execute().outcome is barrier.Outcome.APPLIED
    assert effects(conn) == ["done"]
