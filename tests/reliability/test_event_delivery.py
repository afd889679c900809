"""Nothing lost, nothing applied twice: event delivery across SIGKILL and SIGSTOP.

The order service (producer) and the inventory service (consumer) run as real
processes. Every choreographed create_order publishes one order.created event;
inventory reacts with exactly one reservation and one inventory.reserved event.
Each test runs over both transports: the producer's gRPC stream, and NATS JetStream
(the relay's re-published events de-duplicated by the stream, the consumer durable);
and on both stores: SQLite files, and each service's schema on PostgreSQL (the outbox,
inbox and barrier in the business change's transaction there too).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from protos.sagawire.v1 import inventory_pb2, inventory_pb2_grpc
from services import saga_events
from tests.event_support import create_order_request, execute_until_acked, read_events
from tests.nats_support import TRANSPORTS, Events, events_over
from tests.postgres_support import STORES, StoreChoice, store_on
from tests.support import Process, free_port, open_channel, start_service_process, wait_until

BURST = 500
CONCURRENCY = 16
_PORT_CHOICES = 5


@dataclass
class Pair:
    """A producer (order) and a consumer (inventory), each its own process."""

    data_dir: Path
    ports: dict[str, int]
    processes: dict[str, Process]
    events: Events
    store: StoreChoice

    def env(self) -> dict[str, str]:
        addresses = {f"SAGAWIRE_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in self.ports.items()}
        return {**addresses, **self.events.env(), **self.store.env()}

    def start(self, name: str) -> Process:
        process = start_service_process(name, self.data_dir, self.env(), port=self.ports[name])
        self.processes[name] = process  # stopped at the end whatever happens
        process.port()  # wait until it serves
        return process

    def start_both(self) -> None:
        """Order and inventory; on new ports, all over, if one chosen up front was taken
        meanwhile by another process of the machine."""
        for _ in range(_PORT_CHOICES):
            try:
                self.start("order")
                self.start("inventory")
                return
            except AssertionError as error:
                if "is taken" not in str(error):
                    raise
                self.stop()
                self.ports = {name: free_port() for name in self.ports}
        raise AssertionError(f"no free ports in {_PORT_CHOICES} choices")

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        self.processes.clear()

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StoreChoice]:
    async with store_on(request.param) as chosen:
        yield chosen


@pytest.fixture(params=TRANSPORTS)
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path, store: StoreChoice
) -> AsyncIterator[Pair]:
    async with events_over(request.param) as events:
        ports = {name: free_port() for name in ("order", "inventory", "payment", "shipping")}
        running = Pair(tmp_path, ports, {}, events, store)
        try:
            running.start_both()
            yield running
        finally:
            running.stop()


async def _mug_stock(address: str) -> inventory_pb2.Stock:
    async with open_channel(address) as opened:
        stub = inventory_pb2_grpc.InventoryStub(opened)
        return await stub.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"), timeout=5)


async def _burst(pair: Pair, count: int, midway: Callable[[], None]) -> list[str]:
    """Place ``count`` choreographed orders; call ``midway`` once half are acknowledged."""
    requests = [create_order_request() for _ in range(count)]
    acked = 0
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(request: object) -> None:
        nonlocal acked
        async with gate:
            await execute_until_acked(pair.address("order"), request)  # type: ignore[arg-type]
        acked += 1
        if acked == count // 2:
            midway()

    await asyncio.gather(*(one(r) for r in requests))
    return [r.saga_id for r in requests]


async def _assert_exactly_once(pair: Pair, sagas: list[str]) -> None:
    before = await _mug_stock(pair.address("inventory"))
    total = before.available + before.reserved

    async def caught_up() -> bool:
        stock = await _mug_stock(pair.address("inventory"))
        return stock.reserved == len(sagas)

    await wait_until(caught_up, timeout=60, message="inventory to react to every order")
    created = await read_events(pair.address("order"), len(sagas), [saga_events.ORDER_CREATED])
    # Per-producer order: sequences strictly increase; every saga is there exactly once.
    sequences = [e.sequence for e in created]
    assert sequences == sorted(sequences)
    assert sorted(e.subject for e in created) == sorted(sagas)
    reserved = await read_events(
        pair.address("inventory"), len(sagas), [saga_events.STOCK_RESERVED]
    )
    assert sorted(e.subject for e in reserved) == sorted(sagas)
    stock = await _mug_stock(pair.address("inventory"))
    assert stock.reserved == len(sagas)  # one unit per saga: no reaction applied twice
    assert stock.available + stock.reserved == total
    if pair.events.on_nats:
        # The stream holds each event once, however often a relay published it.
        counts = await pair.events.message_counts("order.>")
        assert sum(n for s, n in counts.items() if s.endswith(".order.created")) == len(sagas)


async def test_producer_sigkilled_mid_burst_loses_nothing(pair: Pair) -> None:
    def crash_and_restart() -> None:
        pair.processes["order"].kill()
        pair.start("order")

    sagas = await _burst(pair, BURST, crash_and_restart)
    await _assert_exactly_once(pair, sagas)


async def test_consumer_sigkilled_mid_burst_applies_each_event_once(pair: Pair) -> None:
    def crash_and_restart() -> None:
        pair.processes["inventory"].kill()
        pair.start("inventory")

    sagas = await _burst(pair, BURST, crash_and_restart)
    await _assert_exactly_once(pair, sagas)


async def test_stopped_consumer_does_not_block_producer_and_catches_up(pair: Pair) -> None:
    inventory = pair.processes["inventory"]
    inventory.signal(signal.SIGSTOP)
    try:
        sagas = await _burst(pair, 200, lambda: None)  # all acknowledged while it is frozen
    finally:
        inventory.signal(signal.SIGCONT)
    await _assert_exactly_once(pair, sagas)
