"""``sagawire bench --saga-log postgresql://...``: orchestration runs again on a PostgreSQL
saga log, with one and with two coordinator replicas, beside SQLite. ``--store`` with
``--events``: raw and choreography (the mode that uses both) again with two replicas of
each service on PostgreSQL and their events on NATS. Every saga ends as expected, the
records agree, and the bench's schemas (and stream) are gone afterwards. Never the speed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from tests.nats_support import NATS_URL, require_nats
from tests.postgres_support import POSTGRES_URL, require_postgres

SAGAWIRE = Path(sys.executable).parent / "sagawire"


async def bench_schemas() -> set[str]:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cursor = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'"
        )
        return {row[0] for row in await cursor.fetchall()}


async def bench_streams() -> set[str]:
    """The bench's streams on the shared server (other tests' come and go meanwhile)."""
    client = await nats.connect(NATS_URL, allow_reconnect=False)
    try:
        names = {str(info.config.name) for info in await client.jetstream().streams_info()}
        return {name for name in names if name.startswith("bench_")}
    finally:
        await client.close()


async def short_bench(tmp_path: Path, *options: str, timeout: float) -> list[dict[str, Any]]:
    """A one-second mixed run at c = 4 with ``options``; its rows, each saga as expected
    and the records consistent."""
    out = tmp_path / "out.json"
    args = [
        str(SAGAWIRE), "bench",
        "--concurrency", "4",
        "--duration", "1",
        "--mix", "mixed",
        "--no-progress",
        "--no-traces",
        "--timeout", "15",
        "--json", str(out),
        *options,
    ]  # fmt: skip
    run = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.exists(), f"exit status {run.returncode}\n{run.stdout}{run.stderr}"
    assert run.returncode == 0, run.stdout + run.stderr
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    for row in rows:
        assert row["sagas"] > 0 and row["unexpected"] == 0, row
        assert row["consistent"] is True
    return rows


@pytest.mark.timeout(120)
async def test_orchestration_on_postgres_with_one_and_two_replicas(tmp_path: Path) -> None:
    await require_postgres()
    before = await bench_schemas()
    rows = await short_bench(
        tmp_path,
        *("--mode", "orchestration", "--warmup", "0.3"),
        *("--saga-log", POSTGRES_URL, "--replicas", "1,2"),
        timeout=110,
    )
    assert [r["mode"] for r in rows] == ["orchestration", "orchestration/pg1", "orchestration/pg2"]
    assert "coordinator-2" in rows[2]["cpu_s_per_saga"]  # both replicas measured
    assert "coordinator-2" not in rows[1]["cpu_s_per_saga"]
    assert await bench_schemas() == before


@pytest.mark.timeout(150)
async def test_raw_and_choreography_on_postgres_stores_and_nats_with_two_replicas_each(
    tmp_path: Path,
) -> None:
    await require_postgres()
    await require_nats()
    before, streams = await bench_schemas(), await bench_streams()
    rows = await short_bench(
        tmp_path,
        *("--mode", "raw,choreography", "--warmup", "0"),
        *("--events", NATS_URL, "--store", POSTGRES_URL, "--replicas", "2"),
        timeout=140,
    )
    modes = ("raw", "choreography")
    assert [r["mode"] for r in rows] == [*modes, *(f"{m}/nats+pgstores+x2" for m in modes)]
    # Both replicas of a service measured: the second named by its port.
    replicated = rows[3]["cpu_s_per_saga"]
    assert sum(1 for name in replicated if name.startswith("order")) == 2, replicated
    assert rows[2]["ratio_to_raw"] == 1.0  # the stack's own raw is its floor
    assert await bench_schemas() == before
    assert await bench_streams() == streams
