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
from common.errors import Aborted, BusinessRejection, RequestMismatch
from protos.sagawire.v1 import common_pb2, order_saga_pb2

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

    def execute(
        self, saga_id: str = "saga-1", step: str = "reserve", fingerprint: str = "request-a"
    ) -> barrier.Guarded:
        return in_transaction(
            self.conn,
            lambda: barrier.guarded_execute(
                self.conn, saga_id, step, self.action, fingerprint=fingerprint
            ),
        )

    def compensate(
        self, saga_id: str = "saga-1", step: str = "reserve", fingerprint: str = "request-a"
    ) -> barrier.Guarded:
        return in_transaction(
            self.conn,
            lambda: barrier.guarded_compensate(
                self.conn, saga_id, step, self.compensation, fingerprint=fingerprint
            ),
        )


def test_first_execute_applies_the_action(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    guarded = step.execute()
    assert guarded == barrier.Guarded(barrier.BarrierOutcome.APPLIED, result=b"first-result")
    assert effects(conn) == ["done"]
    assert barrier.was_executed(conn, "saga-1", "reserve")


def test_duplicate_execute_returns_the_first_result_without_a_second_effect(
    conn: sqlite3.Connection,
) -> None:
    step = Step(conn)
    step.execute()
    step.result = b"a-different-result"
    guarded = step.execute()
    assert guarded == barrier.Guarded(barrier.BarrierOutcome.REPLAYED, result=b"first-result")
    assert step.executed == 1
    assert effects(conn) == ["done"]


def test_the_key_is_saga_and_step(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute("saga-1", "reserve")
    assert step.execute("saga-2", "reserve").outcome is barrier.BarrierOutcome.APPLIED
    assert step.execute("saga-1", "reserve-again").outcome is barrier.BarrierOutcome.APPLIED
    assert step.executed == 3


def test_a_rejection_undoes_the_actions_writes_and_is_replayed(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    first = in_transaction(
        conn,
        lambda: barrier.guarded_execute(
            conn, "saga-1", "reserve", step.rejecting_action, fingerprint="request-a"
        ),
    )
    assert first.outcome is barrier.BarrierOutcome.APPLIED
    assert first.rejection is not None and first.rejection.reason == "INSUFFICIENT_STOCK"
    assert effects(conn) == []  # the savepoint rolled the half-done write back

    # A retry must not turn the recorded "no" into a "yes".
    again = step.execute()
    assert again.outcome is barrier.BarrierOutcome.REPLAYED
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
    assert guarded.outcome is barrier.BarrierOutcome.NULL_COMPENSATION
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
    assert first.outcome is barrier.BarrierOutcome.APPLIED
    assert second.outcome is barrier.BarrierOutcome.REPLAYED
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
    assert step.compensate().outcome is barrier.BarrierOutcome.REPLAYED
    assert step.compensated_with == []
    assert conn.execute("SELECT COUNT(*) FROM barrier").fetchone()[0] == 1


def test_compensating_a_rejected_execute_is_a_null_compensation(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    in_transaction(
        conn,
        lambda: barrier.guarded_execute(
            conn, "saga-1", "reserve", step.rejecting_action, fingerprint="request-a"
        ),
    )
    assert step.compensate().outcome is barrier.BarrierOutcome.NULL_COMPENSATION
    assert step.compensated_with == []
    assert effects(conn) == []


def test_a_bug_in_the_action_records_nothing(conn: sqlite3.Connection) -> None:
    """An unexpected error rolls the transaction back: a retry runs the action afresh."""
    step = Step(conn)

    def broken() -> bytes:
        conn.execute("INSERT INTO effect (what) VALUES ('partial')")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        in_transaction(
            conn,
            lambda: barrier.guarded_execute(
                conn, "saga-1", "reserve", broken, fingerprint="request-a"
            ),
        )
    assert effects(conn) == []
    assert conn.execute("SELECT COUNT(*) FROM barrier").fetchone()[0] == 0
    assert step.execute().outcome is barrier.BarrierOutcome.APPLIED
    assert effects(conn) == ["done"]


# -- fingerprints: every effect is bound to its request ----------------------------------


def test_an_execute_with_a_different_request_is_refused_with_no_effect(
    conn: sqlite3.Connection,
) -> None:
    """A request sent first under the key is never replayed to a different one."""
    step = Step(conn)
    step.execute(fingerprint="charge total=1")
    with pytest.raises(RequestMismatch) as refused:
        step.execute(fingerprint="charge total=49000")
    assert refused.value.reason == "REQUEST_MISMATCH"
    assert step.executed == 1
    assert effects(conn) == ["done"]
    # The first request is still answered as before.
    assert step.execute(fingerprint="charge total=1").outcome is barrier.BarrierOutcome.REPLAYED


def test_a_recorded_rejection_is_not_replayed_to_a_different_request(
    conn: sqlite3.Connection,
) -> None:
    step = Step(conn)
    in_transaction(
        conn,
        lambda: barrier.guarded_execute(
            conn, "saga-1", "reserve", step.rejecting_action, fingerprint="request-a"
        ),
    )
    with pytest.raises(RequestMismatch):
        step.execute(fingerprint="request-b")


def test_a_compensate_of_a_different_request_undoes_nothing(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute(fingerprint="request-a")
    with pytest.raises(RequestMismatch):
        step.compensate(fingerprint="request-b")
    assert step.compensated_with == []
    assert effects(conn) == ["done"]
    # The compensation of the request that ran still works.
    assert step.compensate(fingerprint="request-a").outcome is barrier.BarrierOutcome.APPLIED
    assert effects(conn) == ["done", "undone"]


def test_a_null_compensation_refuses_only_the_request_it_was_about(
    conn: sqlite3.Connection,
) -> None:
    """The coordinator's own late execute is refused; a compensate sent first by someone
    else with another request does not kill the saga: its marker is dropped."""
    mine = Step(conn)
    mine.compensate("saga-1", fingerprint="request-a")
    with pytest.raises(Aborted):
        mine.execute("saga-1", fingerprint="request-a")

    forged = Step(conn)
    forged.compensate("saga-2", fingerprint="forged")
    assert forged.execute("saga-2", fingerprint="real").outcome is barrier.BarrierOutcome.APPLIED
    assert effects(conn) == ["done"]
    # Its own compensation later undoes it (the dropped marker does not answer for it).
    assert forged.compensate("saga-2", fingerprint="real").outcome is barrier.BarrierOutcome.APPLIED
    assert effects(conn) == ["done", "undone"]


def test_a_duplicate_compensate_is_answered_whatever_it_carries(
    conn: sqlite3.Connection,
) -> None:
    step = Step(conn)
    step.execute()
    step.compensate()
    assert step.compensate(fingerprint="other").outcome is barrier.BarrierOutcome.REPLAYED
    assert effects(conn) == ["done", "undone"]


def test_rows_from_before_fingerprints_match_any_request(conn: sqlite3.Connection) -> None:
    step = Step(conn)
    step.execute()
    conn.execute("UPDATE barrier SET fingerprint = NULL")
    assert step.execute(fingerprint="anything").outcome is barrier.BarrierOutcome.REPLAYED
    assert step.compensate(fingerprint="anything").outcome is barrier.BarrierOutcome.APPLIED


def test_migrate_adds_the_fingerprint_column_once() -> None:
    old = sqlite3.connect(":memory:", isolation_level=None)
    old.executescript(barrier.SCHEMA.replace("fingerprint TEXT,", ""))
    assert "fingerprint" not in {row[1] for row in old.execute("PRAGMA table_info(barrier)")}
    barrier.migrate(old)
    barrier.migrate(old)  # idempotent
    assert "fingerprint" in {row[1] for row in old.execute("PRAGMA table_info(barrier)")}
    old.close()


def _order(**fields: object) -> order_saga_pb2.OrderSagaData:
    defaults: dict[str, object] = {
        "order_id": "order-1",
        "customer_id": "alice",
        "items": [common_pb2.LineItem(sku="SKU-MUG", quantity=3)],
        "destination": "Berlin",
        "total": common_pb2.Money(amount_minor=2_400, currency="EUR"),
    }
    return order_saga_pb2.OrderSagaData(**{**defaults, **fields})  # type: ignore[arg-type]


BOUND = ("order_id", "customer_id", "items", "destination", "total")


def test_the_fingerprint_covers_the_bound_fields_only() -> None:
    first = barrier.fingerprint("charge", _order(), BOUND)
    assert first == barrier.fingerprint("charge", _order(), BOUND)  # deterministic
    # A later step's result or the cancel reason do not change it...
    assert first == barrier.fingerprint(
        "charge", _order(shipment_id="s-1", cancel_reason="no stock"), BOUND
    )
    # ...any bound field does, and so does the action.
    cheaper = _order(total=common_pb2.Money(amount_minor=1, currency="EUR"))
    assert first != barrier.fingerprint("charge", cheaper, BOUND)
    assert first != barrier.fingerprint("charge", _order(customer_id="bob"), BOUND)
    assert first != barrier.fingerprint("reserve", _order(), BOUND)
    # No fields named: the whole payload.
    assert barrier.fingerprint("charge", _order()) != barrier.fingerprint(
        "charge", _order(cancel_reason="x")
    )
