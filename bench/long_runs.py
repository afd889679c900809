"""Long-run checks: a soak (is memory flat?) and a recovery (SIGKILL the coordinator).

``soak``: one closed-loop run of many sagas; every process's RSS is read at a tenth of
the run and at its end. Flat means under 10% growth between the two (the bench's own
process is shown but not judged: it keeps every outcome for the final check). Each
store's size (file and WAL) is read at every tenth of the run: with retention on, the
saga log, barrier, outbox and inbox stay within their windows and only the services'
business records (orders, charges, shipments, reservations) grow with the sagas. Set
``SAGAWIRE_RETENTION_*`` in the bench's environment to shrink the windows for a short
soak.

``recovery``: K sagas are placed without waiting; as soon as the last one is accepted
the sagas still RUNNING or COMPENSATING are counted (``ListSagas``) and the coordinator
is SIGKILLed, restarted on the same port and store, and ``ListSagas`` is polled until
none is unfinished. Then every saga's outcome is read (``GetSaga``, not timed) and the
services' records are checked like after any run — nothing lost, nothing done twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import grpc
from rich.console import Console

from bench.closed_loop import BENCH_PROCESS, Placed, ProcessWatch, Stop, closed_loop
from bench.consistency import snapshot, verify
from bench.drivers import Driver, Mix, SagaOutcome, saga_spec, status_name
from bench.report import RunRow, row_of
from bench.stack_under_test import BenchError, BenchStack
from common.grpc_errors import TRANSIENT_CODES
from common.tls import Identity
from common.tokens import with_token
from protos.sagawire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, order_saga_pb2

FLAT_GROWTH = 0.10
_SUBMIT_CONCURRENCY = 64
_POLL_CONCURRENCY = 32
_POLL_EVERY = 0.05
_PAGE = 500
# A saga is finished when it is in neither of these (NEEDS_ATTENTION and STALLED end
# the wait too, and count as unexpected).
_UNFINISHED = (coordinator_pb2.SAGA_STATUS_RUNNING, coordinator_pb2.SAGA_STATUS_COMPENSATING)

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
    """One long run; RSS of every process at ``sagas // 10`` and at ``sagas``, each
    store's size at every tenth."""
    checkpoints = (max(1, sagas // 10), sagas)
    tenths = tuple(sorted({max(1, sagas * n // 10) for n in range(1, 11)}))
    with task(f"{mode} soak c={concurrency}", float(sagas)) as update:
        result = await closed_loop(
            driver,
            mix,
            concurrency,
            Stop(sagas=sagas),
            watch=ProcessWatch(stack.pids()),
            on_progress=update,
            rss_checkpoints=checkpoints,
            store_sizes=stack.store_sizes,
            size_checkpoints=tenths,
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
    async with Identity.from_env().aio_channel(stack.coordinator_address) as channel:
        stub = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), stack.token)
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

        began = time.perf_counter()
        saga_ids = await asyncio.gather(*(submit(n) for n in range(count)))
        submitted = time.perf_counter()
        in_flight = await _unfinished(stub, until)
        killed = time.perf_counter()
        stack.kill_coordinator()
        await stack.restart_coordinator()
        restarted = time.perf_counter()
        after_restart = await _unfinished(stub, until)
        # Polled with one-saga pages: counting hundreds of sagas 20 times a second
        # would load the coordinator the check is timing.
        while await _any_unfinished(stub, until):
            if time.monotonic() > until:
                left = await _unfinished(stub, until)
                raise BenchError(f"recovery: {left} sagas still not terminal")
            await asyncio.sleep(_POLL_EVERY)
        done = time.perf_counter()
        finals = await _sagas(stub, saga_ids, until)

    placed: list[Placed] = []
    outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    for spec, saga in zip(specs, (finals[s] for s in saga_ids), strict=True):
        data = order_saga_pb2.OrderSagaData()
        saga.data.Unpack(data)
        outcome = SagaOutcome(
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
        "submit_s": round(submitted - began, 3),
        "in_flight_at_kill": in_flight,
        "restart_s": round(restarted - killed, 3),
        "unfinished_after_restart": after_restart,
        "outcomes": dict(outcomes),
        "unexpected": sum(unexpected.values()),
        "unexpected_kinds": dict(unexpected),
        "consistent": verdict.consistent and not verdict.bad_orders,
        "problems": verdict.problems,
    }


def _list_unfinished(
    status: coordinator_pb2.SagaStatus.ValueType, page_size: int, token: str = ""
) -> coordinator_pb2.ListSagasRequest:
    return coordinator_pb2.ListSagasRequest(status=status, page_size=page_size, page_token=token)


async def _unfinished(stub: coordinator_pb2_grpc.CoordinatorStub, until: float) -> int:
    """How many sagas are RUNNING or COMPENSATING (ListSagas, paged)."""
    total = 0
    for status in _UNFINISHED:
        token = ""
        while True:
            request = _list_unfinished(status, _PAGE, token)
            page = await _retrying(partial(stub.ListSagas, request, timeout=10), until)
            total += len(page.sagas)
            token = page.next_page_token
            if not token:
                break
    return total


async def _any_unfinished(stub: coordinator_pb2_grpc.CoordinatorStub, until: float) -> bool:
    """Whether any saga is RUNNING or COMPENSATING: one-saga pages, cheap to poll."""
    for status in _UNFINISHED:
        request = _list_unfinished(status, 1)
        page = await _retrying(partial(stub.ListSagas, request, timeout=10), until)
        if page.sagas:
            return True
    return False


async def _sagas(
    stub: coordinator_pb2_grpc.CoordinatorStub, saga_ids: list[str], until: float
) -> dict[str, coordinator_pb2.Saga]:
    """Every saga as the coordinator reports it now (GetSaga, a few at a time)."""
    gate = asyncio.Semaphore(_POLL_CONCURRENCY)

    async def get(saga_id: str) -> coordinator_pb2.Saga:
        async with gate:
            request = coordinator_pb2.GetSagaRequest(saga_id=saga_id)
            saga: coordinator_pb2.Saga = await _retrying(
                lambda: stub.GetSaga(request, timeout=10), until
            )
            return saga

    found = await asyncio.gather(*(get(s) for s in saga_ids))
    return dict(zip(saga_ids, found, strict=True))


def print_check(console: Console, check: dict[str, Any]) -> None:
    """One line per recovery check."""
    colour = "green" if not check["unexpected"] and check["consistent"] else "red"
    outcomes = ", ".join(f"{n} {s}" for s, n in sorted(check["outcomes"].items()))
    console.print(
        f"[{colour}]recovery {check['mode']}: {check['sagas']} sagas placed in "
        f"{check['submit_s']:.2f} s; SIGKILL with {check['in_flight_at_kill']} unfinished; "
        f"back up in {check['restart_s']:.2f} s ({check['unfinished_after_restart']} unfinished); "
        f"all terminal {check['seconds']:.2f} s after the kill; {outcomes}; "
        f"unexpected {check['unexpected']}; consistent {check['consistent']}[/]"
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
    stores = sorted(row.store_mb_at.items(), key=lambda kv: int(kv[0]))
    names = sorted({name for _, at in stores for name in at})
    for name in names:
        sizes = " ".join(f"{at[name]:.2f}" for _, at in stores if name in at)
        console.print(f"soak {row.mode} store {name} (MB at each tenth of the run): {sizes}")
