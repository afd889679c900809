"""The Coordinator API over gRPC with the real services: happy path, queries, validation."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from common.grpc_errors import parse_rpc_error
from coordinator.log.records import Kind
from coordinator.log.sqlite import SqliteSagaLog
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2, order_saga_pb2, participant_pb2
from tests.coordinator_support import SETTLED, line, running_stack

STEP_NAMES = [
    "create_order",
    "reserve_stock",
    "charge_payment",
    "schedule_shipment",
    "approve_order",
]


async def test_happy_path_completes_and_changes_exactly_what_it_should(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        balance, stock = await stack.balance("alice"), await stack.stock("SKU-LAMP")
        reply = await stack.place(items=[("SKU-LAMP", 2), ("SKU-MUG", 1)])
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        assert not reply.failure.code and not reply.existing
        saga = await stack.saga(reply.saga_id)
        assert [s.name for s in saga.steps] == STEP_NAMES
        assert all(s.status == pb.STEP_STATUS_SUCCEEDED for s in saga.steps)
        assert all([a.outcome for a in s.attempts] == ["ok"] for s in saga.steps)
        assert saga.mode == participant_pb2.SAGA_MODE_ORCHESTRATION
        assert saga.trace_id == ""  # filled in by the telemetry issue
        assert saga.finished_at.seconds and saga.deadline.seconds
        data = order_saga_pb2.OrderSagaData()
        assert saga.data.Unpack(data)
        total = 2 * 4_900 + 800
        assert (data.order_id, data.total.amount_minor, data.total.currency) == (
            reply.order_id,
            total,
            "EUR",
        )
        assert data.charge_id and data.shipment_id and data.tracking_number.startswith("SW")
        order = await stack.order(reply.order_id)
        assert order.status == order_pb2.ORDER_STATUS_APPROVED
        assert await stack.balance("alice") == balance - total
        assert await stack.stock("SKU-LAMP") == (stock[0] - 2, stock[1] + 2)
        steps = {s.name: s for s in saga.steps}
        assert list(steps["schedule_shipment"].after) == ["reserve_stock", "charge_payment"]
        assert steps["schedule_shipment"].pivot
        assert steps["charge_payment"].compensation == "refund"


async def test_a_happy_saga_takes_five_log_writes_each_intent_before_its_call(
    tmp_path: Path,
) -> None:
    # A step's intent is written with the result that lets it start (the first ones with
    # the saga); an orchestrated step's result may wait for the saga's next write.
    # Three of the five are waited for: the saga's birth, the pivot's success (forward-only
    # steps follow it) and the outcome; the two between are replayable through the
    # barrier and committed in the background (DESIGN §4).
    # (Retention's own writes, telling participants the saga finished, are not the saga's.)
    async with running_stack(tmp_path, retention_enabled=False) as stack:
        assert stack.app is not None
        saga_log = stack.app.log
        assert isinstance(saga_log, SqliteSagaLog)
        before, waited = saga_log.db.writes, saga_log.waited
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        assert saga_log.db.writes - before == 5
        assert saga_log.waited - waited == 3
        history = await saga_log.history(reply.saga_id)
        seq = {(t.kind, t.step): t.seq for t in history}
        for step in STEP_NAMES:
            assert seq[(Kind.STEP_STARTED, step)] < seq[(Kind.STEP_SUCCEEDED, step)]
        assert history[-1].kind is Kind.SAGA_COMPLETED
        assert len(history) == 2 + 2 * len(STEP_NAMES)


async def test_no_wait_returns_at_once_and_watch_streams_to_the_end(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.faults("shipping", schedule=(0, 300))
        reply = await stack.place(wait=False)
        assert reply.status == pb.SAGA_STATUS_RUNNING
        transitions = [
            t async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))
        ]
        assert [t.sequence for t in transitions] == list(range(1, len(transitions) + 1))
        kinds = [t.kind for t in transitions]
        assert kinds[0] == "saga_started" and kinds[-1] == "saga_completed"
        assert kinds.count("step_started") == kinds.count("step_succeeded") == 5
        assert transitions[-1].status == pb.SAGA_STATUS_COMPLETED
        # Watching a settled saga replays its history and ends.
        again = [t async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))]
        assert again == transitions


async def test_same_idempotency_key_same_saga(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        first, second = await asyncio.gather(
            stack.place(key="order-42"), stack.place(key="order-42")
        )
        assert first.saga_id == second.saga_id and first.order_id == second.order_id
        assert sorted([first.existing, second.existing]) == [False, True]
        third = await stack.place(key="order-42", wait=False)
        assert (third.saga_id, third.existing, third.status) == (
            first.saga_id,
            True,
            pb.SAGA_STATUS_COMPLETED,
        )
        listed = await stack.api.ListSagas(pb.ListSagasRequest())
        assert len(listed.sagas) == 1
        orders = await stack.cluster.order.ListOrders(order_pb2.ListOrdersRequest())
        assert len(orders.orders) == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.place(key="order-42", items=[("SKU-BOOK", 1)])
        remote = parse_rpc_error(caught.value)
        assert (remote.code, remote.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "IDEMPOTENCY_KEY_REUSED",
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": ""}, "customer_id"),
        ({"items": []}, "items"),
        ({"items": [line("", 1)]}, "items[0].sku"),
        ({"items": [line("SKU-MUG", 1), line("SKU-MUG", 0)]}, "items[1].quantity"),
        ({"destination": "  "}, "destination"),
        ({"idempotency_key": "k" * 200}, "idempotency_key"),
        ({"saga": "cancel_everything"}, "saga"),
    ],
)
async def test_invalid_requests_name_the_field_and_write_nothing(
    tmp_path: Path, change: dict[str, object], field: str
) -> None:
    async with running_stack(tmp_path) as stack:
        request = pb.PlaceOrderRequest(
            customer_id="alice", items=[line("SKU-MUG", 1)], destination="Berlin", wait=True
        )
        for key, value in change.items():
            if key == "items":
                del request.items[:]
                request.items.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request, key, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.api.PlaceOrder(request)
        remote = parse_rpc_error(caught.value)
        assert (remote.code, remote.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)
        assert not (await stack.api.ListSagas(pb.ListSagasRequest())).sagas
        assert not (await stack.calls("order"))


async def test_list_sagas_gives_each_sagas_summary_without_a_get(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        declined = await stack.place(customer="carol", items=[("SKU-LAMP", 1)])
        completed = await stack.place(customer="alice", items=[("SKU-MUG", 2), ("SKU-LAMP", 1)])
        listed = {s.saga_id: s for s in (await stack.api.ListSagas(pb.ListSagasRequest())).sagas}
        done = listed[completed.saga_id]
        assert (done.summary.customer_id, done.summary.failure) == ("alice", "")
        assert (done.summary.total.amount_minor, done.summary.total.currency) == (
            2 * 800 + 4_900,
            "EUR",
        )
        assert (done.summary.steps_done, done.summary.steps_total) == (5, 5)
        assert done.saga == "place_order" and done.mode == participant_pb2.SAGA_MODE_ORCHESTRATION
        assert done.created_at.seconds and done.updated_at.seconds and done.finished_at.seconds
        refused = listed[declined.saga_id]
        assert refused.summary.customer_id == "carol"
        assert refused.summary.total.amount_minor == 4_900  # create_order priced it
        assert refused.summary.failure.startswith("charge_payment: INSUFFICIENT_FUNDS")
        assert refused.failure.reason == "INSUFFICIENT_FUNDS"
        # The same as GetSaga says, less the attempts.
        got = await stack.saga(declined.saga_id)
        assert got.summary == refused.summary and got.data == refused.data
        assert [s.status for s in got.steps] == [s.status for s in refused.steps]


async def test_queries_validate_and_page(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        ids = [(await stack.place(customer="carol", items=[("SKU-LAMP", 1)])).saga_id]
        for _ in range(4):
            ids.append((await stack.place()).saga_id)
        first = await stack.api.ListSagas(pb.ListSagasRequest(page_size=3))
        assert [s.saga_id for s in first.sagas] == ids[::-1][:3]
        assert first.sagas[0].steps and not any(s.attempts for s in first.sagas[0].steps)
        rest = await stack.api.ListSagas(
            pb.ListSagasRequest(page_size=3, page_token=first.next_page_token)
        )
        assert [s.saga_id for s in rest.sagas] == ids[::-1][3:] and not rest.next_page_token
        compensated = await stack.api.ListSagas(
            pb.ListSagasRequest(status=pb.SAGA_STATUS_COMPENSATED)
        )
        assert [s.saga_id for s in compensated.sagas] == ids[:1]
        for call, field in [
            (stack.api.GetSaga(pb.GetSagaRequest(saga_id="nope")), "saga_id"),
            (stack.api.ListSagas(pb.ListSagasRequest(page_size=-1)), "page_size"),
            (stack.api.ListSagas(pb.ListSagasRequest(page_token="%%%")), "page_token"),
            (stack.api.ListSagas(pb.ListSagasRequest(status=99)), "status"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert parse_rpc_error(caught.value).field == field
        unknown = str(uuid.uuid4())
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stack.saga(unknown)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as not_watched:
            async for _ in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=unknown)):
                pass
        assert not_watched.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as not_stuck:
            await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=ids[1]))
        assert parse_rpc_error(not_stuck.value).reason == "SAGA_STATUS_CONFLICT"
        breakers = await stack.api.ListBreakers(pb.ListBreakersRequest())
        assert [(b.participant, b.state) for b in breakers.breakers] == [
            ("inventory", "closed"),
            ("order", "closed"),
            ("payment", "closed"),
            ("shipping", "closed"),
        ]
        # Where the coordinator calls each one: how the CLI finds the services.
        assert {b.participant: b.address for b in breakers.breakers} == {
            name: stack.cluster.address(name)
            for name in ("inventory", "order", "payment", "shipping")
        }


async def test_many_concurrent_sagas_all_settle(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_concurrent_sagas=8) as stack:
        before = await stack.balance("dave")
        replies = await asyncio.gather(
            *(stack.place(customer="dave", items=[("SKU-BOOK", 1)], wait=False) for _ in range(40))
        )
        sagas = [await stack.settled(r.saga_id) for r in replies]
        assert all(s.status == pb.SAGA_STATUS_COMPLETED for s in sagas)
        assert all(s.status in SETTLED for s in sagas)
        assert await stack.balance("dave") == before - 40 * 1_500
