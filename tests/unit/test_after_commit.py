"""What a piece of work asks to be done after its commit happens once, and only if it committed.

On both stores a refused piece of work (its savepoint rolled back) runs no hook, and a
transaction that lost a race (PostgreSQL, run again whole) runs only the hooks of the
attempt that committed. The barrier's decisions are counted so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidArgument
from common.pg_store import PostgresDatabase
from common.store import Database, StoreConflict, after_commit
from tests.postgres_support import POSTGRES_URL, fresh_schema

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        db: Any = Database(tmp_path / "s.db", SCHEMA)
        await db.open()
        yield db
        await db.close()
        return
    async with postgres_store() as pg:
        yield pg


@asynccontextmanager
async def postgres_store() -> AsyncIterator[PostgresDatabase]:
    async with fresh_schema() as schema:
        pg = PostgresDatabase(POSTGRES_URL, schema, SCHEMA, pool_size=2)
        await pg.open()
        try:
            yield pg
        finally:
            await pg.close()


def inserting(ran: list[str], name: str) -> Callable[[Any], int]:
    def work(conn: Any) -> int:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        after_commit(lambda: ran.append(name))
        assert ran == []  # not before the commit
        return 1

    return work


async def test_a_hook_runs_once_its_work_committed_and_before_the_caller_resumes(
    store: Any,
) -> None:
    ran: list[str] = []
    assert await store.transaction(inserting(ran, "kept")) == 1
    assert ran == ["kept"]


async def test_a_refused_piece_of_work_runs_no_hook(store: Any) -> None:
    ran: list[str] = []

    def refused(conn: Any) -> None:
        conn.execute("INSERT INTO t (x) VALUES (2)")
        after_commit(lambda: ran.append("refused"))
        raise InvalidArgument("x", "refused after it asked")

    with pytest.raises(InvalidArgument):
        await store.transaction(refused)
    assert ran == []
    count = await store.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0])
    assert count == 0


async def test_a_transaction_run_again_after_a_lost_race_runs_the_hooks_once() -> None:
    # PostgreSQL only: SQLite has one writer, so no transaction of its loses a race.
    ran: list[str] = []
    attempts = 0

    def racing(conn: Any) -> None:
        nonlocal attempts
        attempts += 1
        conn.execute("INSERT INTO t (x) VALUES (3)")
        after_commit(lambda: ran.append(f"attempt {attempts}"))
        if attempts == 1:
            raise StoreConflict("lost a race, as a concurrent replica would make it")

    async with postgres_store() as store:
        await store.transaction(racing)
    assert attempts == 2 and ran == ["attempt 2"]


def test_outside_a_transaction_a_hook_runs_at_once() -> None:
    ran: list[str] = []
    after_commit(lambda: ran.append("now"))
    assert ran == ["now"]
