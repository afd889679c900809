"""``sagawire bench --saga-log postgresql://...``: orchestration runs again on a PostgreSQL
saga log, with one and with two coordinator replicas, beside SQLite; every saga ends as
expected, and the bench's schema is gone afterwards. Never the speed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.postgres_support import POSTGRES_URL, require_postgres

SAGAWIRE = Path(sys.executable).parent / "sagawire"


async def bench_schemas() -> set[str]:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cursor = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'"
        )
        return {row[0] for row in await cursor.fetchall()}


@pytest.mark.timeout(120)
async def test_orchestration_on_postgres_with_one_and_two_replicas(tmp_path: Path) -> None:
    await require_postgres()
    before = await bench_schemas()
    out = tmp_path / "out.json"
    args = [
        str(SAGAWIRE), "bench",
        "--mode", "orchestration",
        "--concurrency", "4",
        "--duration", "1",
        "--warmup", "0.3",
        "--mix", "mixed",
        "--no-progress",
        "--no-traces",
        "--timeout", "15",
        "--saga-log", POSTGRES_URL,
        "--replicas", "1,2",
        "--json", str(out),
    ]  # fmt: skip
    run = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=110, check=False
    )
    assert out.exists(), f"exit status {run.returncode}\n{run.stdout}{run.stderr}"
    assert run.returncode == 0, run.stdout + run.stderr
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["orchestration", "orchestration/pg1", "orchestration/pg2"]
    for row in rows:
        assert row["sagas"] > 0 and row["unexpected"] == 0, row
        assert row["consistent"] is True
    assert "coordinator-2" in rows[2]["cpu_s_per_saga"]  # both replicas measured
    assert "coordinator-2" not in rows[1]["cpu_s_per_saga"]
    assert await bench_schemas() == before
