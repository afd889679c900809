"""Two replicas of each service on PostgreSQL and NATS: a replica is SIGKILLed and the
NATS server restarted mid-run; every saga ends, no invariant breaks, nothing twice.

The run is ``sagawire chaos`` (real processes: two replicas of each service on one
fresh schema each, the coordinator calling them round robin, faults injected, a
participant's first replica SIGKILLed and restarted) on a nats-server of the test's own
(tests/nats_support.py: PrivateNats, stopped and started by its pid, never the
machine's), which the test restarts once the orders are flowing. Chaos's own checks
then read every saga and the services' records: each terminal, stock and money
conserved, at most one charge and one shipment per saga.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from tests.nats_support import PrivateNats
from tests.postgres_support import POSTGRES_URL, require_postgres
from tests.support import ROOT, wait_until

SAGAS = 120
# Events in the stream before the server goes down: the run is well under way.
EVENTS_BEFORE_RESTART = 150
OUTAGE_SECONDS = 2.0


async def _stored_events(url: str) -> int:
    """Messages held by every stream of the server (the chaos pass makes its own)."""
    client = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        js = client.jetstream()
        return sum(info.state.messages for info in await js.streams_info())
    finally:
        await client.close()


@pytest.mark.timeout(170)
async def test_replicas_on_postgres_survive_a_replica_kill_and_a_nats_restart(
    tmp_path: Path,
) -> None:
    await require_postgres()
    server = PrivateNats(tmp_path)
    await server.start()
    out = tmp_path / "chaos.json"
    args = [
        sys.executable, "-m", "cli.main", "chaos",
        "--mode", "choreography",
        "--seed", "5",
        "--sagas", str(SAGAS),
        "--concurrency", "16",
        "--reference", "plan",
        "--kills-coordinator", "0",
        "--kills-participant", "1",
        "--timeout", "60",
        "--settle-timeout", "60",
        "--events", server.url,
        "--store", POSTGRES_URL,
        "--replicas", "2",
        "--no-progress",
        "--json", str(out),
    ]  # fmt: skip
    log = tmp_path / "chaos.log"
    with log.open("wb") as sink:  # a file, not a pipe: nobody reads it while it runs
        chaos = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:

        async def flowing() -> bool:
            return await _stored_events(server.url) >= EVENTS_BEFORE_RESTART

        await wait_until(flowing, timeout=90, interval=0.5)
        server.stop()
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a state
        await server.start()
        await asyncio.wait_for(chaos.wait(), timeout=150)
    finally:
        if chaos.returncode is None:
            chaos.kill()
            await chaos.wait()
        server.stop()
    text = log.read_text(errors="replace")
    assert out.exists(), f"exit status {chaos.returncode}\n{text}"
    report = json.loads(out.read_text())
    (result,) = report["modes"]
    run = result["chaos"]
    assert any("kill" in blow for blow in run["blows"]), run["blows"]
    assert result["violation_counts"] == {}, text
    assert run["not_terminal"] == {}, text
    assert run["placed"] == SAGAS
    assert (report["store"], report["events"], report["replicas"]) == ("postgresql", "nats", 2)
    assert chaos.returncode == 0, text
