"""The PostgreSQL saga log's schema, as numbered migrations the coordinator applies at start.

Each migration runs once, in order, in its own transaction, and is recorded in
``schema_migrations``. Replicas starting together take one advisory lock first, so
exactly one of them applies what is missing and the others find it done: starting a
coordinator is idempotent. A migration, once released, is never edited: a change to
the schema is a new migration at the end of :data:`MIGRATIONS`.

The tables mirror the SQLite adapter's (coordinator/log/sqlite.py) with what sharing the
log adds: each saga's lease (``owner``, ``fence``, ``lease_until``), the writer and fencing
token of each transition (so a test or an operator can check that no stale owner wrote),
leases of roles held by one replica at a time (``leases``: the choreography observer),
and the observer's stream offsets (``observer_offsets``), which follow the observer from
replica to replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "saga log with leases",
        """
        CREATE TABLE sagas (
            saga_id         text PRIMARY KEY,
            definition      text NOT NULL,
            mode            text NOT NULL,
            status          text NOT NULL,
            direction       text NOT NULL,
            data            bytea NOT NULL,
            idempotency_key text UNIQUE,
            request_hash    text NOT NULL DEFAULT '',
            failure_step    text,
            failure_code    text,
            failure_reason  text,
            failure_message text,
            round           integer NOT NULL DEFAULT 0,
            trace_id        text NOT NULL DEFAULT '',
            created_at      timestamptz NOT NULL,
            updated_at      timestamptz NOT NULL,
            finished_at     timestamptz,
            deadline        timestamptz NOT NULL,
            last_seq        integer NOT NULL,
            told_at         timestamptz,
            owner           text,
            fence           bigint NOT NULL DEFAULT 0,
            lease_until     timestamptz
        );
        CREATE INDEX sagas_by_time ON sagas (created_at, saga_id);
        CREATE INDEX sagas_by_status ON sagas (status, created_at, saga_id);
        CREATE INDEX sagas_leased ON sagas (lease_until)
            WHERE status IN ('running', 'compensating') AND owner IS NOT NULL;
        CREATE INDEX sagas_untold ON sagas (finished_at)
            WHERE finished_at IS NOT NULL AND told_at IS NULL;
        CREATE INDEX sagas_told ON sagas (finished_at) WHERE told_at IS NOT NULL;
        CREATE TABLE steps (
            saga_id  text NOT NULL,
            position integer NOT NULL,
            name     text NOT NULL,
            status   text NOT NULL,
            result   bytea NOT NULL DEFAULT '',
            PRIMARY KEY (saga_id, name)
        );
        CREATE TABLE attempts (
            id            bigint GENERATED ALWAYS AS IDENTITY,
            saga_id       text NOT NULL,
            step          text NOT NULL,
            phase         text NOT NULL,
            number        integer NOT NULL,
            round         integer NOT NULL,
            started_at    timestamptz NOT NULL,
            finished_at   timestamptz,
            outcome       text,
            error_code    text,
            error_reason  text,
            error_message text,
            PRIMARY KEY (saga_id, step, phase, number)
        );
        CREATE TABLE transitions (
            saga_id text NOT NULL,
            seq     integer NOT NULL,
            kind    text NOT NULL,
            step    text NOT NULL,
            attempt integer NOT NULL,
            at      timestamptz NOT NULL,
            status  text NOT NULL,
            detail  text NOT NULL,
            writer  text NOT NULL,
            fence   bigint NOT NULL,
            PRIMARY KEY (saga_id, seq)
        );
        CREATE TABLE leases (
            name  text PRIMARY KEY,
            owner text NOT NULL,
            fence bigint NOT NULL,
            until timestamptz NOT NULL
        );
        CREATE TABLE observer_offsets (
            producer text PRIMARY KEY,
            sequence bigint NOT NULL
        );
        """,
    ),
)


async def migrate(
    conn: AsyncConnection[Any], schema: str, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Create ``schema`` and apply the migrations it lacks; the versions applied now.

    ``conn`` is in autocommit mode; its search_path names ``schema``.
    """
    applied_now: list[int] = []
    async with conn.transaction():
        # One replica at a time; the lock goes with the transaction.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sagawire.migrate.{schema}",)
        )
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(row[0]) for row in await cursor.fetchall()}
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            await conn.execute(migration.statements)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
    return applied_now
