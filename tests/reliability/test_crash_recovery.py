"""SIGKILL the coordinator (a real subprocess) anywhere; after a restart nothing is lost or doubled.

Each test starts the four services in-process and the coordinator as its own
process. The crash hook (``SAGAWIRE_CRASH_AT``) kills it at exact points of the
saga protocol; the last test kills it at random times during a batch of
concurrent sagas, twice, then checks the invariants against the services' own
records: stock and money conserved, one effect per saga and step at most,
every acknowledged saga COMPLETED or COMPENSATED.
"""

from __future__ import annotations

import asyncio
import random
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from common.config import SEED_FILE
from coordinator.engine.crash import CRASH_EXIT_CODE
from protos.sagawire.v1 import admin_pb2, order_pb2, order_saga_pb2, payment_pb2, shipping_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import (
    FINAL,
    Stack,
    kill_process,
    running_stack,
    start_coordinator_process,
    stop_process,
    wait_exit,
    write_definitions,
)
from tests.support import Process, listing, wait_until

SEED = tomllib.loads(SEED_FILE.read_text())
Items = Sequence[tuple[str, int]]


@dataclass(frozen=True)
class Order:
    key: str
    customer: str
    items: Items
    to: str


@asynccontextmanager
async def services(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, in_process=False) as stack:
        yield stack


async def start(stack: Stack, tmp_path: Path, crash_at: str = "") -> Process:
    """A coordinator process on the shared data dir; the stack talks to it from now on."""
    process = start_coordinator_process(
        stack.cluster, tmp_path / "coordinator", tmp_path / "sagas.yaml", crash_at=crash_at
    )
    port = await asyncio.to_thread(process.port)
    await stack.reconnect(f"127.0.0.1:{port}")
    return process


async def running_sagas(stack: Stack) -> int:
    try:
        listed = await stack.api.ListSagas(
            pb.ListSagasRequest(status=pb.SAGA_STATUS_RUNNING, page_size=10), timeout=2
        )
    except grpc.aio.AioRpcError:
        return 0  # not serving yet
    return len(listed.sagas)


async def place(stack: Stack, order: Order) -> str | None:
    """The saga id once acknowledged; None if the coordinator died before answering."""
    try:
        reply = await stack.place(
            customer=order.customer, items=order.items, to=order.to, wait=False, key=order.key
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None
    return reply.saga_id


async def check_invariants(stack: Stack, sagas: dict[str, pb.Saga]) -> None:
    """The services' own records agree with the sagas' outcomes, and nothing was doubled."""
    reserved: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    for saga_id, saga in sagas.items():
        data = order_saga_pb2.OrderSagaData()
        assert saga.data.Unpack(data)
        completed = saga.status == pb.SAGA_STATUS_COMPLETED
        charges = await stack.cluster.payment.ListCharges(
            payment_pb2.ListChargesRequest(saga_id=saga_id)
        )
        captured = [c for c in charges.charges if c.status == payment_pb2.CHARGE_STATUS_CAPTURED]
        assert len(charges.charges) <= 1, saga_id  # at most one charge per saga
        assert len(captured) == (1 if completed else 0), saga_id
        try:
            order = await stack.order(data.order_id)
            order_status = order.status
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            order_status = order_pb2.ORDER_STATUS_UNSPECIFIED
        if completed:
            assert order_status == order_pb2.ORDER_STATUS_APPROVED, saga_id
            spent[data.customer_id] += data.total.amount_minor
            for item in data.items:
                reserved[item.sku] += item.quantity
        else:
            assert order_status in (
                order_pb2.ORDER_STATUS_CANCELLED,
                order_pb2.ORDER_STATUS_UNSPECIFIED,
            ), saga_id
    shipments = await listing(
        stack.cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments"
    )
    per_saga = Counter(s.saga_id for s in shipments)
    assert max(per_saga.values(), default=0) <= 1  # at most one shipment per saga
    for shipment in shipments:
        scheduled = shipment.status == shipping_pb2.SHIPMENT_STATUS_SCHEDULED
        assert scheduled == (sagas[shipment.saga_id].status == pb.SAGA_STATUS_COMPLETED)
    for sku, total in SEED["inventory"]["stock"].items():
        available, held = await stack.stock(sku)
        assert available + held == total, sku  # stock is conserved
        assert held == reserved[sku], sku
    for customer, balance in SEED["payment"]["accounts"].items():
        assert await stack.balance(customer) == balance - spent[customer], customer


@pytest.mark.parametrize(
    ("crash_at", "to", "status"),
    [
        ("after_intent:charge_payment", "Berlin", pb.SAGA_STATUS_COMPLETED),
        ("after_call:charge_payment", "Berlin", pb.SAGA_STATUS_COMPLETED),
        ("after_call:schedule_shipment", "Berlin", pb.SAGA_STATUS_COMPLETED),
        ("after_compensate_intent:reserve_stock", "Atlantis", pb.SAGA_STATUS_COMPENSATED),
        ("after_compensate_call:charge_payment", "Atlantis", pb.SAGA_STATUS_COMPENSATED),
    ],
)
async def test_kill_at_each_critical_point_then_recover(
    tmp_path: Path, crash_at: str, to: str, status: int
) -> None:
    write_definitions(tmp_path / "sagas.yaml")
    async with services(tmp_path) as stack:
        order = Order("k-1", "alice", [("SKU-MUG", 2)], to)
        first = await start(stack, tmp_path, crash_at)
        saga_id = await place(stack, order)
        assert await wait_exit(first) == CRASH_EXIT_CODE, first.output
        assert "crash hook firing" in first.output
        second = await start(stack, tmp_path)
        try:
            saga_id = saga_id or await place(stack, order)
            assert saga_id is not None
            saga = await stack.settled(saga_id, FINAL)
            assert saga.status == status, second.output
            history = [
                t.kind async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id))
            ]
            assert "saga_resumed" in history
            await check_invariants(stack, {saga_id: saga})
        finally:
            await stop_process(second)


async def transitions_of(stack: Stack, saga_id: str) -> list[str]:
    return [t.kind async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id))]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("to", "status"),
    [("Berlin", pb.SAGA_STATUS_COMPLETED), ("Atlantis", pb.SAGA_STATUS_COMPENSATED)],
)
async def test_a_kill_between_any_two_transitions_converges_through_the_barrier(
    tmp_path: Path, to: str, status: int
) -> None:
    """DESIGN §4: only the saga's birth and outcome (and the pivot's success) wait for the
    disk; the transitions between are committed in the background. The coordinator is
    killed right after its n-th transition was handed to the log, for every n of a
    saga's life: that transition and any still queued before it are lost with the
    process. Recovery resumes from the last durable one and re-sends what followed;
    the barrier replays each call, so every saga ends as it would have, and the
    services' records show each effect once."""
    write_definitions(tmp_path / "sagas.yaml")
    async with services(tmp_path) as stack:
        # How many transitions such a saga has: one run without a kill.
        clean = await start(stack, tmp_path)
        try:
            reference = await place(stack, Order("reference", "alice", [("SKU-MUG", 1)], to))
            assert reference is not None
            sagas = {reference: await stack.settled(reference, FINAL)}
            total = len(await transitions_of(stack, reference))
        finally:
            await stop_process(clean)
        assert total >= 12
        resumed, lost = 0, 0
        for n in range(1, total + 1):
            order = Order(f"k-{n}", "alice", [("SKU-MUG", 1)], to)
            killed = await start(stack, tmp_path, f"transition#{n}")
            saga_id = await place(stack, order)
            assert await wait_exit(killed) == CRASH_EXIT_CODE, killed.output
            again = await start(stack, tmp_path)
            try:
                # Not acknowledged (killed at its birth): placed again with its key.
                saga_id = saga_id or await place(stack, order)
                assert saga_id is not None
                saga = await stack.settled(saga_id, FINAL)
                assert saga.status == status, (n, again.output)
                kinds = await transitions_of(stack, saga_id)
            finally:
                await stop_process(again)
            sagas[saga_id] = saga
            if "saga_resumed" in kinds:
                resumed += 1
                # Transitions logged before the kill: fewer than n when it lost some.
                lost += kinds.index("saga_resumed") < n
        await check_invariants(stack, sagas)
        # Every kill after the birth was recovered, and kills lost transitions: the
        # n-th always, and often those queued before it.
        assert resumed >= total - 3, resumed
        assert lost == resumed, (lost, resumed)


async def test_kill_during_recovery_itself(tmp_path: Path) -> None:
    write_definitions(tmp_path / "sagas.yaml")
    async with services(tmp_path) as stack:
        order = Order("k-1", "alice", [("SKU-BOOK", 1)], "Atlantis")
        first = await start(stack, tmp_path, "after_call:schedule_shipment")
        saga_id = await place(stack, order)
        assert await wait_exit(first) == CRASH_EXIT_CODE
        # Recovery resumes the saga and dies again: once before resuming anything,
        # then in the middle of the compensation it started.
        for crash_at in ("recovery", "after_compensate_call:reserve_stock"):
            again = start_coordinator_process(
                stack.cluster, tmp_path / "coordinator", tmp_path / "sagas.yaml", crash_at
            )
            assert await wait_exit(again) == CRASH_EXIT_CODE, again.output
            assert "recovering sagas count=1" in again.output
        last = await start(stack, tmp_path)
        try:
            saga_id = saga_id or await place(stack, order)
            assert saga_id is not None
            saga = await stack.settled(saga_id, FINAL)
            assert saga.status == pb.SAGA_STATUS_COMPENSATED
            await check_invariants(stack, {saga_id: saga})
        finally:
            await stop_process(last)


async def test_sigterm_leaves_running_sagas_to_recovery(tmp_path: Path) -> None:
    write_definitions(tmp_path / "sagas.yaml")
    async with services(tmp_path) as stack:
        await stack.faults("shipping", schedule=(0, 1500))
        first = await start(stack, tmp_path)
        order = Order("k-1", "alice", [("SKU-MUG", 1)], "Berlin")
        saga_id = await place(stack, order)
        assert saga_id is not None
        await stack.settled(saga_id, frozenset({pb.SAGA_STATUS_RUNNING}))
        assert await stop_process(first) == 0, first.output  # a clean, prompt shutdown
        assert "left to recovery sagas=1" in first.output
        await stack.faults("shipping")
        second = await start(stack, tmp_path)
        try:
            saga = await stack.settled(saga_id, FINAL)
            assert saga.status == pb.SAGA_STATUS_COMPLETED
            await check_invariants(stack, {saga_id: saga})
        finally:
            await stop_process(second)


def batch(rng: random.Random) -> list[Order]:
    """60 orders: most succeed; some are declined, unshippable or fight over one rare item."""
    orders = []
    for i in range(60):
        kind = i % 6
        if kind == 0:
            orders.append(Order(f"k-{i}", "carol", [("SKU-LAMP", 1)], "Berlin"))
        elif kind == 1:
            orders.append(Order(f"k-{i}", "dave", [("SKU-BOOK", 1)], "Atlantis"))
        elif kind == 2:
            orders.append(Order(f"k-{i}", "alice", [("SKU-RARE", 1), ("SKU-MUG", 1)], "Oslo"))
        else:
            sku = rng.choice(["SKU-MUG", "SKU-BOOK", "SKU-LAMP"])
            customer = rng.choice(["alice", "dave"])
            orders.append(Order(f"k-{i}", customer, [(sku, rng.randint(1, 3))], "Berlin"))
    return orders


@pytest.mark.slow
async def test_random_kills_during_concurrent_sagas_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(20250101)
    write_definitions(tmp_path / "sagas.yaml", deadline="60s")
    orders = batch(rng)
    async with services(tmp_path) as stack:
        flaky = admin_pb2.FaultPlan(unavailable_rate=0.05, seed=7)
        for name in ("inventory", "payment"):
            await stack.cluster.admin(name).SetFaults(flaky)
        acked: dict[str, str] = {}
        for delay in (rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2)):
            process = await start(stack, tmp_path)
            pending = [o for o in orders if o.key not in acked]
            placing = asyncio.gather(*(place(stack, o) for o in pending))
            # A random moment once sagas are under way (not before the first is placed,
            # which a slow start would make likely, nor after the last is done).
            await wait_until(lambda: running_sagas(stack), timeout=30, message="a running saga")
            await asyncio.sleep(delay)
            await kill_process(process)  # SIGKILL
            for order, saga_id in zip(pending, await placing, strict=True):
                if saga_id is not None:
                    acked[order.key] = saga_id
        acked_early = len(acked)
        final = await start(stack, tmp_path)
        try:
            for order in orders:
                saga_id = await place(stack, order)  # same key: the same saga, never a second
                assert saga_id is not None
                assert acked.setdefault(order.key, saga_id) == saga_id  # no ack was lost
            sagas = {
                saga_id: await stack.settled(saga_id, FINAL, timeout=90)
                for saga_id in acked.values()
            }
            listed = await listing(stack.api.ListSagas, pb.ListSagasRequest(), "sagas")
            assert len(listed) == len(orders)
            await check_invariants(stack, sagas)
            outcomes = Counter(s.status for s in sagas.values())
            assert outcomes[pb.SAGA_STATUS_COMPLETED] >= 20, outcomes
            assert outcomes[pb.SAGA_STATUS_COMPENSATED] >= 20, outcomes
            resumed = sum(
                any(a.outcome == "interrupted" for step in s.steps for a in step.attempts)
                for s in sagas.values()
            )
            print(f"acked before the last start: {acked_early}, interrupted: {resumed}")
            assert resumed > 0  # the kills did land in the middle of sagas
        finally:
            await stop_process(final)
