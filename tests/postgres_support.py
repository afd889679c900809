"""PostgreSQL for the tests that need it: a fresh schema each, dropped afterwards.

The server is the machine's (127.0.0.1:5432, trust authentication), or
``SAGAWIRE_TEST_POSTGRES``. Unreachable, the tests skip with how to start it; in CI
(``CI=true``) they fail instead, since CI has the server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from common.pg_store import drop_schemas

POSTGRES_URL = os.environ.get("SAGAWIRE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


async def require_postgres() -> None:
    """Skip (fail in CI) unless the test server answers."""
    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, connect_timeout=3)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL unreachable at {POSTGRES_URL} ({error}); {START_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    await conn.close()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema name of this test's own (created by whoever opens the log first), dropped
    with everything in it at the end."""
    await require_postgres()
    schema = f"sw_test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


STORES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class StoreChoice:
    """Where a test's services keep their stores: SQLite files (the default), or each its
    own schema ``<prefix>_<service>`` on the test server."""

    kind: str
    url: str = ""
    prefix: str = ""

    @property
    def on_postgres(self) -> bool:
        return self.kind == "postgresql"

    def settings(self) -> dict[str, Any]:
        """Settings overrides for in-process services (none for SQLite, the default)."""
        if not self.on_postgres:
            return {}
        return {"store": self.url, "store_prefix": self.prefix}

    def env(self) -> dict[str, str]:
        """The same, as environment variables for subprocesses."""
        return {f"SAGAWIRE_{k.upper()}": str(v) for k, v in self.settings().items()}

    def log_settings(self) -> dict[str, Any]:
        """A coordinator's saga log beside the services' stores: on PostgreSQL the schema
        ``<prefix>_coordinator`` (dropped with theirs), on SQLite the default file."""
        if not self.on_postgres:
            return {}
        return {"saga_log": self.url, "saga_log_schema": f"{self.prefix}_coordinator"}


@asynccontextmanager
async def store_on(kind: str) -> AsyncIterator[StoreChoice]:
    """``kind``'s settings for one test; on PostgreSQL a fresh prefix, whose schemas are
    dropped at the end."""
    if kind != "postgresql":
        yield StoreChoice(kind)
        return
    await require_postgres()
    choice = StoreChoice(kind, POSTGRES_URL, f"swt_{uuid.uuid4().hex[:12]}")
    try:
        yield choice
    finally:
        await drop_schemas(POSTGRES_URL, choice.prefix)
