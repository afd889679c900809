"""Coordinator replicas sharing one PostgreSQL saga log, as real processes: one is killed
(SIGKILL) or paused (SIGSTOP) past its leases in the middle of a batch of sagas.

The four services run in the test process; each coordinator is its own process with its
own data dir, all on one fresh schema, with 2-second leases. After the blow, every saga
must end COMPLETED or COMPENSATED on the replicas left, and the services' own records
must show nothing done twice (tests/reliability/test_crash_recovery.py's invariants:
one charge, one shipment at most per saga, stock and money conserved). The log's history
shows that no saga was driven by two replicas at once: each transition keeps its writer
and fencing token, and a saga's tokens never go back, each token written by one replica.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import (
    FINAL,
    Stack,
    kill_process,
    running_stack,
    start_coordinator_process,
    stop_process,
    write_definitions,
)
from tests.postgres_support import POSTGRES_URL, fresh_schema, require_postgres
from tests.reliability.test_crash_recovery import Order, batch, check_invariants, place
from tests.support import ROOT, Process, wait_until

LEASE_SECONDS = 2.0


@dataclass
class Replica:
    name: str
    process: Process
    client: Stack


@dataclass
class Replicas:
    stack: Stack
    schema: str
    tmp_path: Path
    mode: str
    started: list[Replica]

    async def start(self, name: str) -> Replica:
        env = {
            "SAGAWIRE_SAGA_LOG": POSTGRES_URL,
            "SAGAWIRE_SAGA_LOG_SCHEMA": self.schema,
            "SAGAWIRE_REPLICA_ID": name,
            "SAGAWIRE_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        if self.mode:
            env["SAGAWIRE_MODE"] = self.mode
        process = start_coordinator_process(
            self.stack.cluster, self.tmp_path / name, self.tmp_path / "sagas.yaml", env=env
        )
        port = await asyncio.to_thread(process.port)
        replica = Replica(name, process, Stack(self.stack.cluster, f"127.0.0.1:{port}"))
        self.started.append(replica)
        return replica


@pytest.fixture
async def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    mode = getattr(request, "param", "")
    write_definitions(tmp_path / "sagas.yaml", deadline="90s")
    async with AsyncExitStack() as stack:
        schema = await stack.enter_async_context(fresh_schema())
        services = await stack.enter_async_context(running_stack(tmp_path, in_process=False))
        group = Replicas(services, schema, tmp_path, mode, [])
        try:
            yield group
        finally:
            for replica in group.started:
                replica.process.signal(signal.SIGCONT)
                await replica.client.stop_coordinator()
                await stop_process(replica.process)


async def running(replica: Replica) -> int:
    try:
        listed = await replica.client.api.ListSagas(
            pb.ListSagasRequest(status=pb.SAGA_STATUS_RUNNING, page_size=50), timeout=2
        )
    except grpc.aio.AioRpcError:
        return 0
    return len(listed.sagas)


async def place_all(orders: list[Order], on: list[Replica]) -> dict[str, str | None]:
    """Each order on the next replica in turn; the saga id, or None if not acknowledged."""
    placed = await asyncio.gather(
        *(place(on[i % len(on)].client, order) for i, order in enumerate(orders))
    )
    return {order.key: saga_id for order, saga_id in zip(orders, placed, strict=True)}


async def settle_all(
    orders: list[Order], acked: dict[str, str | None], on: Replica
) -> dict[str, pb.Saga]:
    """Every order placed once more on ``on`` (the same key: the same saga, never a
    second) and followed to its end."""
    sagas: dict[str, pb.Saga] = {}
    for order in orders:
        saga_id = await place(on.client, order)
        assert saga_id is not None
        assert acked[order.key] in (None, saga_id)  # an acknowledged saga is the one
        sagas[saga_id] = await on.client.settled(saga_id, FINAL, timeout=120)
    return sagas


async def history(schema: str) -> dict[str, list[tuple[int, str, int]]]:
    """Each saga's transitions as (seq, writer, token), in order."""
    async with await psycopg.AsyncConnection.connect(
        POSTGRES_URL, options=f"-c search_path={schema}"
    ) as conn:
        cursor = await conn.execute(
            "SELECT saga_id, seq, writer, fence FROM transitions ORDER BY saga_id, seq"
        )
        found: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for saga_id, seq, writer, fence in await cursor.fetchall():
            found[saga_id].append((seq, writer, fence))
        return found


async def unfinished_of(schema: str, replica: str) -> bool:
    """Whether no unfinished saga is leased to ``replica`` any more."""
    async with await psycopg.AsyncConnection.connect(
        POSTGRES_URL, options=f"-c search_path={schema}"
    ) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM sagas WHERE owner = %s AND status IN ('running', 'compensating')",
            (replica,),
        )
        row = await cursor.fetchone()
        return row is not None and row[0] == 0


def check_fencing(transitions: dict[str, list[tuple[int, str, int]]]) -> dict[str, list[str]]:
    """No saga driven by two replicas at once: its tokens never go back and each token is
    one driver's (the observer's writes excepted: they are fenced by the observer's role).
    Returns each saga's drivers in order."""
    drivers: dict[str, list[str]] = {}
    for saga_id, rows in transitions.items():
        tokens = [fence for _, _, fence in rows]
        assert tokens == sorted(tokens), (saga_id, rows)
        owner_of: dict[int, str] = {}
        for _, writer, fence in rows:
            if writer.endswith(":observer"):
                continue
            assert owner_of.setdefault(fence, writer) == writer, (saga_id, rows)
        drivers[saga_id] = [owner_of[f] for f in sorted(owner_of)]
    return drivers


@pytest.mark.parametrize("replicas", ["orchestration", "choreography"], indirect=True)
async def test_a_killed_replica_s_sagas_end_on_the_others_and_nothing_is_done_twice(
    replicas: Replicas,
) -> None:
    rng = random.Random(20)
    orders = batch(rng) + [
        Order(f"b-{o.key}", o.customer, o.items, o.to) for o in batch(random.Random(21))
    ]
    # Shipments take a while: many sagas are mid-flight when the blow comes.
    await replicas.stack.faults("shipping", schedule=(0, 300))
    first, second, third = [await replicas.start(n) for n in ("r1", "r2", "r3")]
    placing = asyncio.create_task(place_all(orders, [first, second, third]))
    await wait_until(lambda: running(first), timeout=30, message="sagas running on r1")
    await asyncio.sleep(0.3)
    await kill_process(first.process)  # SIGKILL: its leases expire, the others take over
    killed = time.monotonic()
    await wait_until(
        lambda: unfinished_of(replicas.schema, "r1"), timeout=30, message="r1's sagas taken"
    )
    took = time.monotonic() - killed
    acked = await placing
    await replicas.stack.faults("shipping")
    sagas = await settle_all(orders, acked, second)
    await check_invariants(second.client, sagas)
    drivers = check_fencing(await history(replicas.schema))
    assert set(drivers) == set(sagas)
    taken_over = [s for s, names in drivers.items() if names[0] == "r1" and len(names) > 1]
    print(
        f"{len(acked)} orders, r1's sagas taken over by the others: {len(taken_over)},"
        f" none left to r1 {took:.1f} s after the kill (leases of {LEASE_SECONDS:g} s)"
    )
    survivors = second.process.output + third.process.output
    if replicas.mode == "orchestration":
        assert taken_over  # the kill did land in the middle of r1's sagas
        assert "took over sagas" in survivors
    else:  # r1, first up, was the observer; another replica observes now
        assert "observing choreographed sagas replica=r1" in first.process.output
        assert "observing choreographed sagas replica=r" in survivors


async def test_a_paused_replica_past_its_leases_is_fenced_off(replicas: Replicas) -> None:
    # Shipments take longer than a lease: the paused replica is mid-call on each saga.
    await replicas.stack.faults("shipping", schedule=(0, 2500))
    first, second = await replicas.start("r1"), await replicas.start("r2")
    orders = [Order(f"p-{i}", "alice", [("SKU-MUG", 1)], "Berlin") for i in range(8)]
    acked = await place_all(orders, [first])
    assert all(acked.values())

    async def all_running() -> bool:
        return await running(first) == len(orders)

    await wait_until(all_running, timeout=20, message="every saga running")
    await asyncio.sleep(0.5)  # shipments under way
    first.process.signal(signal.SIGSTOP)
    await wait_until(
        lambda: "took over sagas" in second.process.output,
        timeout=20,
        message="r2 takes r1's sagas over",
    )
    first.process.signal(signal.SIGCONT)
    await replicas.stack.faults("shipping")
    sagas = await settle_all(orders, acked, second)
    assert {s.status for s in sagas.values()} == {pb.SAGA_STATUS_COMPLETED}
    await check_invariants(second.client, sagas)
    drivers = check_fencing(await history(replicas.schema))
    assert all(drivers[s] == ["r1", "r2"] for s in sagas), drivers

    async def r1_told() -> bool:
        return "lease lost saga_id=" in first.process.output

    await wait_until(r1_told, timeout=10, message="r1 learns it lost its leases")
    # r1 finds out by its next renewal or by a write refused, whichever comes first.
    output = first.process.output
    print(
        f"r1 after its pause: {output.count('lease lost saga_id=')} leases found lost,"
        f" {output.count('write refused: lease lost')} of them by a refused write"
    )


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
async def test_chaos_with_two_replicas_on_postgres_breaks_no_invariant(
    mode: str, tmp_path: Path
) -> None:
    """``sagawire chaos`` with two replicas on a PostgreSQL log: faults, a kill of a
    replica and of a participant (and a stream cut), no violation, the same completed
    orders as the fault-free pass."""
    await require_postgres()
    out, sagas = tmp_path / "chaos.json", 120
    args = [
        sys.executable, "-m", "cli.main", "chaos",
        "--mode", mode,
        "--seed", "3",
        "--sagas", str(sagas),
        "--concurrency", "16",
        "--kills-coordinator", "1",
        "--kills-participant", "1",
        "--timeout", "60",
        "--settle-timeout", "45",
        "--saga-log", POSTGRES_URL,
        "--replicas", "2",
        "--no-progress",
        "--json", str(out),
    ]  # fmt: skip
    run = await asyncio.to_thread(
        subprocess.run, args, cwd=ROOT, capture_output=True, text=True, timeout=190, check=False
    )
    assert out.exists(), f"exit status {run.returncode}\n{run.stdout}{run.stderr}"
    report = json.loads(out.read_text())
    (result,) = report["modes"]
    chaos = result["chaos"]
    assert sum("kill coordinator" in b for b in chaos["blows"]) == 1, chaos["blows"]
    assert result["violation_counts"] == {}, run.stdout
    assert chaos["not_terminal"] == {}, run.stdout
    assert chaos["placed"] == sagas and chaos["completed"] == result["expected_completed"]
    assert report["saga_log"] == "postgresql" and report["replicas"] == 2
    assert run.returncode == 0, run.stdout + run.stderr
