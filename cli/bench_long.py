"""Long-run checks: a soak (is memory flat?) and a recovery (SIGKILL the coordinator).

``soak``: one closed-loop run of many sagas; every process's RSS is read at a tenth of
the run and at its end. Flat means under 10% growth between the two (the bench's own
process is shown but not judged: it keeps every outcome for the final check).

``recovery``: K sagas are placed without waiting, the coordinator is SIGKILLed as soon
as the last one is accepted (most are still running), restarted on the same port and
store, and ``GetSaga`` is polled until all K are terminal; the services' records are
then checked like after any run — nothing lost, nothing done twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import grpc
from rich.console import Console

from cli.bench_check import snapshot, verify
from cli.bench_load import BENCH_PROCESS, Placed, ProcessWatch, Stop, closed_loop
from cli.bench_report import RunRow, row_of
from cli.bench_sagas import Driver, Mix, Outcome, saga_spec, status_name
from cli.bench_stack import BenchError, BenchStack
from common.errors import TRANSIENT_CODES
from protos.sagawire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, order_saga_pb2

FLAT_GROWTH = 0.10
_SUBMIT_CONCURRENCY = 64
_POLL_CONCURRENCY = 16
_POLL_EVERY = 0.05
_TERMINAL = {
    coordinator_pb2.SAGA_STATUS_COMPLETED,
    coordinator_pb2.SAGA_STATUS_COMPENSATED,
    coordinator_pb2.SAGA_STATUS_NEEDS_ATTENTION,
    coordinator_pb2.SAGA_STATUS_STALLED,
}

ProgressTask = Callable[[str, float], AbstractContextManager[Callable[[float, int], None]]]


def rss_growth(row: RunRow) -> dict[str, float]:
    """Growth (fraction) of each process's RSS from the first checkpoint to the last."""
    points = sorted(row.rss_mb_at.items(), key=lambda kv: int(kv[0]))
    if len(points) < 2:
        return {}
    first, last = points[0][1], points[-1][1]
    return {n: (last[n] - first[n]) / first[n] for n in first if n in last and first[n] > 0}


async def soak(
    stack: BenchStack,
    mode: str,
    driver: Driver,
    mix: Mix,
    concurrency: int,
    sagas: int,
    task: ProgressTask,
) -> tuple[RunRow, list[Placed]]:
    """One long run; RSS of every process at ``sagas // 10`` and at ``sagas``."""
    checkpoints = (max(1, sagas // 10), sagas)
    with task(f"{mode} soak c={concurrency}", float(sagas)) as update:
        result = await closed_loop(
            driver,
            mix,
            concurrency,
            Stop(sagas=sagas),
            watch=ProcessWatch(stack.pids()),
            on_progress=update,
            rss_checkpoints=checkpoints,
        )
    row = row_of(mode, concurrency, mix.value, result, kind="soak")
    row.rss_growth = {n: round(g, 4) for n, g in rss_growth(row).items()}
    return row, result.placed


async def _retrying(call: Callable[[], Any], until: float) -> Any:
    """Call until it succeeds, retrying transient errors (the coordinator restarting)."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in TRANSIENT_CODES or time.monotonic() > until:
                raise
            await asyncio.sleep(_POLL_EVERY)


async def recovery(stack: BenchStack, mode: str, mix: Mix, count: int) -> dict[str, Any]:
    """Place ``count`` sagas, SIGKILL the coordinator, restart it, time until all end."""
    addresses = stack.addresses()
    before = await snapshot(addresses)
    specs = [saga_spec(mix, n) for n in range(count)]
    prefix = f"recovery-{mode}-{os.getpid()}-{time.time_ns()}"
    until = time.monotonic() + max(120.0, count / 20)
    async with grpc.aio.insecure_channel(stack.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        gate = asyncio.Semaphore(_SUBMIT_CONCURRENCY)

        async def submit(number: int) -> str:
            spec = specs[number]
            request = coordinator_pb2.PlaceOrderRequest(
                customer_id=spec.customer,
                items=[common_pb2.LineItem(sku=sku, quantity=qty) for sku, qty in spec.items],
                destination=spec.destination,
                idempotency_key=f"{prefix}-{number}",
                wait=False,
            )
            async with gate:
                reply = await _retrying(lambda: stub.PlaceOrder(request, timeout=30), until)
            return str(reply.saga_id)

        saga_ids = await asyncio.gather(*(submit(n) for n in range(count)))
        killed = time.perf_counter()
        stack.kill_coordinator()
        await stack.restart_coordinator()
        restarted = time.perf_counter()
        finals, unfinished_after_restart = await _until_terminal(stub, saga_ids, until)
        done = time.perf_counter()

    placed: list[Placed] = []
    outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    for spec, saga in zip(specs, (finals[s] for s in saga_ids), strict=True):
        data = order_saga_pb2.OrderSagaData()
        saga.data.Unpack(data)
        outcome = Outcome(
            status_name(saga.status),
            data.order_id,
            saga.saga_id,
            saga.failure.step,
            saga.failure.reason,
            saga.failure.code,
        )
        outcomes[outcome.status] += 1
        if not outcome.matches(spec):
            unexpected[outcome.describe(spec)] += 1
        placed.append(Placed(spec, outcome))
    verdict = await verify(addresses, before, await snapshot(addresses), placed)
    seconds = done - killed
    return {
        "kind": "recovery",
        "mode": mode,
        "concurrency": _SUBMIT_CONCURRENCY,
        "mix": mix.value,
        "sagas": count,
        "seconds": round(seconds, 3),
        "sagas_per_s": round(count / seconds, 1) if seconds > 0 else None,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "ratio_to_raw": None,
        "restart_s": round(restarted - killed, 3),
        "unfinished_after_restart": unfinished_after_restart,
        "outcomes": dict(outcomes),
        "unexpected": sum(unexpected.values()),
        "unexpected_kinds": dict(unexpected),
        "consistent": verdict.consistent and not verdict.bad_orders,
        "problems": verdict.problems,
    }


async def _until_terminal(
    stub: coordinator_pb2_grpc.CoordinatorStub, saga_ids: list[str], until: float
) -> tuple[dict[str, coordinator_pb2.Saga], int]:
    """Poll GetSaga until every saga is terminal; returns them and how many were not at first."""
    remaining = set(saga_ids)
    finals: dict[str, coordinator_pb2.Saga] = {}
    gate = asyncio.Semaphore(_POLL_CONCURRENCY)
    first_round: int | None = None

    async def look(saga_id: str) -> None:
        async with gate:
            request = coordinator_pb2.GetSagaRequest(saga_id=saga_id)
            saga = await _retrying(lambda: stub.GetSaga(request, timeout=10), until)
        if saga.status in _TERMINAL:
            finals[saga_id] = saga
            remaining.discard(saga_id)

    while remaining:
        await asyncio.gather(*(look(s) for s in list(remaining)))
        if first_round is None:
            first_round = len(remaining)
        if not remaining:
            break
        if time.monotonic() > until:
            raise BenchError(f"recovery: {len(remaining)} sagas still not terminal")
        await asyncio.sleep(_POLL_EVERY)
    return finals, first_round or 0


def print_check(console: Console, check: dict[str, Any]) -> None:
    """One line per recovery check."""
    colour = "green" if not check["unexpected"] and check["consistent"] else "red"
    outcomes = ", ".join(f"{n} {s}" for s, n in sorted(check["outcomes"].items()))
    console.print(
        f"[{colour}]recovery {check['mode']}: {check['sagas']} sagas, coordinator SIGKILLed, "
        f"back up in {check['restart_s']:.2f} s, all terminal {check['seconds']:.2f} s after "
        f"the kill ({check['unfinished_after_restart']} still unfinished after the restart); "
        f"{outcomes}; unexpected {check['unexpected']}; consistent {check['consistent']}[/]"
    )
    for problem in check["problems"]:
        console.print(f"  [red]{problem}[/]")


def print_soak(console: Console, row: RunRow) -> None:
    """RSS at each checkpoint and the verdict per process."""
    growth = rss_growth(row)
    points = sorted(row.rss_mb_at.items(), key=lambda kv: int(kv[0]))
    for name, fraction in growth.items():
        sizes = " -> ".join(f"{at[name]:.1f} MB at {int(n):,}" for n, at in points if name in at)
        judged = name != BENCH_PROCESS
        flat = fraction < FLAT_GROWTH
        verdict = ("flat" if flat else "GROWING") if judged else "not judged (keeps outcomes)"
        colour = "green" if flat or not judged else "red"
        console.print(f"[{colour}]soak {row.mode} {name}: {sizes} ({fraction:+.1%}) {verdict}[/]")
