"""Placing a chaos plan's orders through ``PlaceOrder``, the way a careful client would.

Each order has its own idempotency key. A call that fails with a transient code
(the coordinator killed or restarting, or refusing new sagas at the door while a
breaker is open) is retried with the same key, with jittered exponential backoff
(tenacity), so a retry after a kill finds the saga the first call started instead
of placing a second one. The client waits for each saga's outcome (``wait``). A
STALLED answer is no outcome (late events settle a stalled saga), so the client asks
again, with the same backoff; an order's latency runs until its outcome.

A closed loop keeps ``concurrency`` orders in flight; an open loop places every
order at once and waits on all of them. :class:`Progress` counts settled sagas, the
clock the chaos schedule runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from bench.drivers import status_name
from cli.chaos_plan import Plan, PlannedOrder
from common.grpc_errors import TRANSIENT_CODES, parse_rpc_error
from common.tls import Identity
from common.tokens import with_token
from protos.sagawire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

# The answers the client stops at: an outcome, or a saga only an operator can move on.
# STALLED is not one: late events settle a stalled saga, so the client asks again.
FINAL = frozenset({"COMPLETED", "COMPENSATED", "NEEDS_ATTENTION"})
# One PlaceOrder call waits this long for the outcome; then it is asked again.
_CALL_TIMEOUT = 30.0
# Reconnect fast after a coordinator restart (gRPC's default starts at 1 s, up to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.max_receive_message_length", 64 << 20),
]


def open_channel(address: str, peer: str) -> grpc.aio.Channel:
    """Every channel of a chaos run: as the operator (``SAGAWIRE_TLS_IDENTITY``), to
    ``peer``, the process expected at ``address``."""
    return Identity.from_env().aio_channel(address, peer=peer, options=CHANNEL_OPTIONS)


class _NotSettled(Exception):
    """The coordinator answered before the saga had an outcome: it was shutting down, or
    it had flagged the saga STALLED."""


@dataclass
class Placement:
    """What the client saw of one planned order."""

    number: int
    key: str
    # Every saga id the coordinator answered for this key (exactly one, if all is well).
    saga_ids: set[str] = field(default_factory=set)
    # The final status the client was told ("" when it never was).
    told: str = ""
    calls: int = 0
    # Seconds from the first call to the settled answer (None when there was none).
    latency: float | None = None
    # Why the order has no settled answer: a non-transient error, or the deadline.
    error: str = ""
    # How many answers said STALLED before the outcome came.
    stalled_answers: int = 0

    @property
    def accepted(self) -> bool:
        return bool(self.saga_ids)


class Progress:
    """How many of the run's sagas have settled, and a way to wait for a count."""

    def __init__(self) -> None:
        self.settled = 0
        self.finished = asyncio.Event()
        self._changed = asyncio.Condition()

    async def advance(self) -> None:
        async with self._changed:
            self.settled += 1
            self._changed.notify_all()

    async def reach(self, count: int) -> bool:
        """Wait until ``count`` sagas settled (True) or the drive finished first (False)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.settled >= count or self.finished.is_set())
            return self.settled >= count

    async def finish(self) -> None:
        async with self._changed:
            self.finished.set()
            self._changed.notify_all()


def _transient(error: BaseException) -> bool:
    if isinstance(error, _NotSettled):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in TRANSIENT_CODES


def order_key(run_id: str, number: int) -> str:
    """The idempotency key of a planned order: unique per run, stable across retries."""
    return f"{run_id}-{number}"


def _request(order: PlannedOrder, key: str) -> coordinator_pb2.PlaceOrderRequest:
    return coordinator_pb2.PlaceOrderRequest(
        customer_id=order.customer,
        items=[common_pb2.LineItem(sku=sku, quantity=qty) for sku, qty in order.items],
        destination=order.destination,
        idempotency_key=key,
        wait=True,
    )


class _RoundRobin:
    """Stands for a coordinator stub: each call goes to the next replica in turn, so a
    retry after a replica died goes to another one."""

    def __init__(self, stubs: Sequence[coordinator_pb2_grpc.CoordinatorStub]) -> None:
        self._turn = itertools.cycle(stubs)

    def PlaceOrder(
        self, request: coordinator_pb2.PlaceOrderRequest, timeout: float
    ) -> Awaitable[coordinator_pb2.PlaceOrderResponse]:
        reply: Awaitable[coordinator_pb2.PlaceOrderResponse] = next(self._turn).PlaceOrder(
            request, timeout=timeout
        )
        return reply


async def place(
    stub: coordinator_pb2_grpc.CoordinatorStub | _RoundRobin,
    order: PlannedOrder,
    placement: Placement,
    give_up_after: float,
) -> None:
    """Place one order and wait for its outcome, retrying transient failures with the
    same key until ``give_up_after`` seconds have passed."""
    request = _request(order, placement.key)
    begin = time.perf_counter()
    retrying = AsyncRetrying(
        retry=retry_if_exception(_transient),
        wait=wait_random_exponential(multiplier=0.1, max=0.5),
        stop=stop_after_delay(give_up_after),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                placement.calls += 1
                left = give_up_after - (time.perf_counter() - begin)
                reply = await stub.PlaceOrder(request, timeout=max(0.1, min(_CALL_TIMEOUT, left)))
                placement.saga_ids.add(reply.saga_id)
                status = status_name(reply.status)
                if status == "STALLED":
                    placement.stalled_answers += 1
                if status not in FINAL:
                    raise _NotSettled(status)
                placement.told = status
    except _NotSettled as late:
        placement.error = f"no outcome within {give_up_after:g}s (last answer {late})"
        return
    except grpc.aio.AioRpcError as error:
        remote = parse_rpc_error(error)
        placement.error = f"{remote.code.name}: {remote.reason or remote.message}"
        return
    placement.latency = time.perf_counter() - begin


async def drive(
    coordinator: str | Sequence[str],
    token: str | None,
    plan: Plan,
    run_id: str,
    concurrency: int | None,
    progress: Progress,
    *,
    give_up_after: float,
    on_progress: Callable[[float, int], None] | None = None,
) -> list[Placement]:
    """Place every order of ``plan``: ``concurrency`` at a time (closed loop), or all at
    once when ``concurrency`` is None (open loop); every call carries ``token`` (the
    operator's bearer token); several ``coordinator`` addresses (replicas sharing one
    log) take the calls in turn. Returns one placement per order."""
    placements = [Placement(o.number, order_key(run_id, o.number)) for o in plan.orders]
    numbers = iter(range(len(plan.orders)))
    workers = len(plan.orders) if concurrency is None else min(concurrency, len(plan.orders))
    addresses = [coordinator] if isinstance(coordinator, str) else list(coordinator)
    async with contextlib.AsyncExitStack() as channels:
        stubs = [
            with_token(
                coordinator_pb2_grpc.CoordinatorStub(
                    await channels.enter_async_context(open_channel(address, "coordinator"))
                ),
                token,
            )
            for address in addresses
        ]
        stub = stubs[0] if len(stubs) == 1 else _RoundRobin(stubs)

        async def worker() -> None:
            for number in numbers:
                await place(stub, plan.orders[number], placements[number], give_up_after)
                await progress.advance()
                if on_progress is not None:
                    on_progress(float(progress.settled), progress.settled)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in itertools.repeat(None, workers):
                    group.create_task(worker())
        finally:
            await progress.finish()
    return placements
