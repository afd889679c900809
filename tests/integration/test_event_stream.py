"""The outbox and the event stream, against real in-process services over gRPC."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from common import outbox
from common.grpc_errors import parse_rpc_error
from common.store import Database
from protos.sagawire.v1 import (
    admin_pb2,
    events_pb2,
    events_pb2_grpc,
    order_pb2,
    order_saga_pb2,
    participant_pb2,
    payment_pb2,
)
from services import saga_events
from tests.event_support import create_order_request, read_events
from tests.support import Cluster, listing, wait_until


async def collect(
    stream: AsyncIterator[events_pb2.EventBatch], seen: list[events_pb2.Event], count: int
) -> None:
    """Read a Subscribe stream into ``seen`` (visible while it runs) until it holds ``count``."""
    async for batch in stream:
        seen.extend(batch.events)
        if len(seen) >= count:
            return


async def place_and_wait_approved(
    cluster: Cluster, request: participant_pb2.StepRequest, waiting_for: str
) -> None:
    """Start a choreographed order with ``request`` and wait until the services approve it."""
    await cluster.participant("order").Execute(request)
    data = order_saga_pb2.OrderSagaData()
    request.payload.Unpack(data)

    async def approved() -> bool:
        found = await cluster.order.GetOrder(order_pb2.GetOrderRequest(order_id=data.order_id))
        return found.status == order_pb2.ORDER_STATUS_APPROVED

    await wait_until(approved, message=waiting_for)


async def test_rolled_back_change_emits_no_event_and_committed_one_does(tmp_path: Path) -> None:
    db = Database(tmp_path / "atomic.db", schema=outbox.SCHEMA)
    await db.open()
    box = outbox.Outbox(db, source="test")

    def change_then_fail(conn: sqlite3.Connection) -> None:
        outbox.append(conn, "test.happened", "saga-1", order_saga_pb2.OrderSagaData())
        raise RuntimeError("the business change failed after the event was appended")

    with pytest.raises(RuntimeError):
        await db.transaction(change_then_fail)
    assert (await box.read(1, 10))[0] == []

    await db.transaction(
        lambda conn: outbox.append(conn, "test.happened", "saga-2", order_saga_pb2.OrderSagaData())
    )
    events, scanned = await box.read(1, 10)
    assert [(e.type, e.subject, e.sequence) for e in events] == [("test.happened", "saga-2", 1)]
    assert scanned == 1
    await db.close()


async def test_subscribe_streams_backlog_then_live_events_in_order(cluster: Cluster) -> None:
    order = cluster.participant("order")
    started = datetime.now(UTC)
    first = [create_order_request() for _ in range(3)]
    for request in first:
        await order.Execute(request)

    stub = events_pb2_grpc.EventStreamStub(cluster.channel("order"))
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(from_sequence=1, types=[saga_events.ORDER_CREATED]),
        timeout=20,
    )
    seen: list[events_pb2.Event] = []
    reader = asyncio.create_task(collect(stream, seen, 5))
    await wait_until(lambda: len(seen) >= 3, message="the backlog")
    live = [create_order_request() for _ in range(2)]
    for request in live:
        await order.Execute(request)
    await asyncio.wait_for(reader, 10)
    stream.cancel()

    assert [e.subject for e in seen] == [r.saga_id for r in first + live]
    assert all(e.type == saga_events.ORDER_CREATED and e.source == "order" for e in seen)
    sequences = [e.sequence for e in seen]
    assert sequences == sorted(sequences) and len(set(sequences)) == 5
    # Each event's time is when it was committed, to the microsecond, in UTC.
    times = [e.time.ToDatetime(tzinfo=UTC) for e in seen]
    assert started <= times[0] and times == sorted(times) and times[-1] <= datetime.now(UTC)
    assert all(e.time.nanos % 1_000 == 0 for e in seen) and any(e.time.nanos for e in seen)
    payload = events_pb2.OrderSagaEvent()
    assert seen[0].data.Unpack(payload)
    assert payload.data.total.amount_minor > 0


async def test_subscribe_rejects_a_negative_sequence(cluster: Cluster) -> None:
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("order"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=-1), timeout=5):
            pass
    remote = parse_rpc_error(caught.value)
    assert remote.code == grpc.StatusCode.INVALID_ARGUMENT
    assert remote.field == "from_sequence"


async def test_choreographed_order_flows_through_all_four_services(cluster: Cluster) -> None:
    request = create_order_request(sku="SKU-BOOK", quantity=2)
    await place_and_wait_approved(cluster, request, "the order to be approved")
    shipping_events = await read_events(cluster.address("shipping"), 1)
    assert shipping_events[0].type == saga_events.SHIPMENT_SCHEDULED
    assert shipping_events[0].subject == request.saga_id


async def test_orchestrated_steps_publish_events_but_trigger_no_reactions(
    cluster: Cluster,
) -> None:
    request = create_order_request()
    request.mode = participant_pb2.SAGA_MODE_ORCHESTRATION
    await cluster.participant("order").Execute(request)
    created = await read_events(cluster.address("order"), 1)
    assert created[0].subject == request.saga_id
    # Inventory follows the order stream; give it an event it must react to, and
    # check the orchestrated one before it left no reservation behind.
    probe = create_order_request()
    await cluster.participant("order").Execute(probe)
    reserved = await read_events(
        cluster.address("inventory"), 1, types=[saga_events.STOCK_RESERVED]
    )
    assert [e.subject for e in reserved] == [probe.saga_id]


async def test_subscribe_can_ask_for_the_events_of_one_saga_mode(cluster: Cluster) -> None:
    orchestrated = create_order_request()
    orchestrated.mode = participant_pb2.SAGA_MODE_ORCHESTRATION
    choreographed = create_order_request()
    await cluster.participant("order").Execute(orchestrated)
    await cluster.participant("order").Execute(choreographed)

    stub = events_pb2_grpc.EventStreamStub(cluster.channel("order"))
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(
            from_sequence=1,
            types=[saga_events.ORDER_CREATED],
            headers={"saga-mode": "choreography"},
        ),
        timeout=10,
    )
    batch = await stream.read()
    stream.cancel()
    assert [e.subject for e in batch.events] == [choreographed.saga_id]
    assert batch.events[0].sequence == 2  # the orchestrated one (1) was not sent


async def test_a_mode_filtered_stream_delivers_live_events_of_its_mode(cluster: Cluster) -> None:
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("order"))
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(
            from_sequence=1,
            types=[saga_events.ORDER_CREATED],
            headers={"saga-mode": "choreography"},
        ),
        timeout=20,
    )
    seen: list[events_pb2.Event] = []
    reader = asyncio.create_task(collect(stream, seen, 2))
    expected = []
    for _ in range(2):  # live: the stream is idle, waiting for its mode's commits
        orchestrated = create_order_request()
        orchestrated.mode = participant_pb2.SAGA_MODE_ORCHESTRATION
        await cluster.participant("order").Execute(orchestrated)
        choreographed = create_order_request()
        await cluster.participant("order").Execute(choreographed)
        expected.append(choreographed.saga_id)
    await asyncio.wait_for(reader, 10)
    stream.cancel()
    assert [e.subject for e in seen] == expected
    assert all(e.headers["saga-mode"] == "choreography" for e in seen)


async def test_a_waiter_for_one_mode_wakes_for_its_mode_or_an_unnamed_commit(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "wake.db", schema=outbox.SCHEMA)
    await db.open()
    box = outbox.Outbox(db, source="test")

    async def woken_by(mode: str | None) -> bool:
        seen = box.stamp("choreography")
        waiter = asyncio.create_task(box.wait_for_commit(seen, 5, "choreography"))
        await asyncio.sleep(0)  # let it register before the commit is announced
        await box.notify(mode)
        done, _ = await asyncio.wait({waiter}, timeout=0.2)
        waiter.cancel()
        return waiter in done

    assert await woken_by("choreography")
    assert await woken_by(None)
    assert not await woken_by("orchestration")
    # A commit announced between the stamp and the wait is not missed.
    seen = box.stamp("choreography")
    await box.notify("choreography")
    await asyncio.wait_for(box.wait_for_commit(seen, 5, "choreography"), 1)
    await db.close()


async def test_a_reaction_that_fails_transiently_is_retried_until_it_succeeds(
    cluster: Cluster,
) -> None:
    payment = cluster.admin("payment")
    fault = admin_pb2.ActionFault(action="charge", fail_next=2)
    await payment.SetFaults(admin_pb2.FaultPlan(actions=[fault]))
    before = (await payment.GetCallCounts(admin_pb2.GetCallCountsRequest())).calls["charge"]
    request = create_order_request(sku="SKU-BOOK", quantity=1)
    await place_and_wait_approved(
        cluster, request, "the order to be approved despite two failed charges"
    )
    after = (await payment.GetCallCounts(admin_pb2.GetCallCountsRequest())).calls["charge"]
    assert after - before == 3  # two injected failures, then the charge
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("payment"))
    poison = await listing(stub.ListPoisonEvents, events_pb2.ListPoisonEventsRequest(), "events")
    assert poison == []
    charges = await cluster.payment.ListCharges(
        payment_pb2.ListChargesRequest(saga_id=request.saga_id)
    )
    assert len(charges.charges) == 1  # charged once, for all the retries
