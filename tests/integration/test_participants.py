"""Every action and compensation of every service, over real gRPC, checked through the
services' own query RPCs."""

from __future__ import annotations

import re

import grpc

from protos.sagawire.v1 import (
    common_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)
from tests.integration.steps import (
    compensate,
    execute,
    failure,
    order_data,
    result_of,
    step_request,
    with_action,
)
from tests.support import Cluster, listing

APPLIED = participant_pb2.BARRIER_OUTCOME_APPLIED


async def stock(cluster: Cluster, sku: str) -> tuple[int, int]:
    level = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku=sku))
    return level.available, level.reserved


async def balance(cluster: Cluster, customer_id: str) -> int:
    request = payment_pb2.GetAccountRequest(customer_id=customer_id)
    account = await cluster.payment.GetAccount(request)
    assert account.balance.currency == "EUR"
    return int(account.balance.amount_minor)


async def get_order(cluster: Cluster, order_id: str) -> order_pb2.OrderRecord:
    record: order_pb2.OrderRecord = await cluster.order.GetOrder(
        order_pb2.GetOrderRequest(order_id=order_id)
    )
    return record


class TestOrder:
    async def test_create_order_prices_and_records_a_pending_order(self, cluster: Cluster) -> None:
        items = [
            common_pb2.LineItem(sku="SKU-BOOK", quantity=2),
            common_pb2.LineItem(sku="SKU-MUG", quantity=1),
        ]
        data = order_data(customer_id="bob", destination="Porto", items=items)
        request = step_request("create_order", data)
        reply = await execute(cluster, "order", request)

        assert reply.outcome == APPLIED
        total = common_pb2.Money(amount_minor=2 * 1_500 + 800, currency="EUR")
        assert result_of(reply).total == total
        record = await get_order(cluster, data.order_id)
        assert record.status == order_pb2.ORDER_STATUS_PENDING
        assert (record.saga_id, record.customer_id, record.destination) == (
            request.saga_id,
            "bob",
            "Porto",
        )
        assert list(record.items) == items
        assert record.total == total
        assert record.created_at.seconds > 0

    async def test_cancel_order_cancels_with_the_reason(self, cluster: Cluster) -> None:
        data = order_data(cancel_reason="payment declined: INSUFFICIENT_FUNDS")
        request = step_request("create_order", data)
        await execute(cluster, "order", request)
        reply = await compensate(cluster, "order", with_action(request, "cancel_order"))

        assert reply.outcome == APPLIED
        record = await get_order(cluster, data.order_id)
        assert record.status == order_pb2.ORDER_STATUS_CANCELLED
        assert record.reason == "payment declined: INSUFFICIENT_FUNDS"

    async def test_cancel_without_a_reason_says_cancelled(self, cluster: Cluster) -> None:
        data = order_data()
        request = step_request("create_order", data)
        await execute(cluster, "order", request)
        await compensate(cluster, "order", with_action(request, "cancel_order"))
        assert (await get_order(cluster, data.order_id)).reason == "cancelled"

    async def test_approve_order_approves_a_pending_order(self, cluster: Cluster) -> None:
        data = order_data()
        saga_id = step_request("create_order", data).saga_id
        await execute(cluster, "order", step_request("create_order", data, saga_id))
        reply = await execute(cluster, "order", step_request("approve_order", data, saga_id))

        assert reply.outcome == APPLIED
        record = await get_order(cluster, data.order_id)
        assert (record.status, record.reason) == (order_pb2.ORDER_STATUS_APPROVED, "")

    async def test_an_approved_order_is_never_cancelled(self, cluster: Cluster) -> None:
        data = order_data()
        create = step_request("create_order", data)
        await execute(cluster, "order", create)
        await execute(cluster, "order", step_request("approve_order", data, create.saga_id))

        refused = await failure(compensate(cluster, "order", with_action(create, "cancel_order")))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ORDER_FINISHED",
        )
        assert (await get_order(cluster, data.order_id)).status == order_pb2.ORDER_STATUS_APPROVED

    async def test_a_cancelled_order_is_never_approved(self, cluster: Cluster) -> None:
        data = order_data()
        create = step_request("create_order", data)
        await execute(cluster, "order", create)
        await compensate(cluster, "order", with_action(create, "cancel_order"))

        approve = step_request("approve_order", data, create.saga_id)
        refused = await failure(execute(cluster, "order", approve))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ORDER_FINISHED",
        )
        assert (await get_order(cluster, data.order_id)).status == order_pb2.ORDER_STATUS_CANCELLED

    async def test_approving_an_unknown_order_is_not_found(self, cluster: Cluster) -> None:
        refused = await failure(
            execute(cluster, "order", step_request("approve_order", order_data()))
        )
        assert refused.code == grpc.StatusCode.NOT_FOUND

    async def test_list_orders_pages_newest_first_and_filters_by_status(
        self, cluster: Cluster
    ) -> None:
        created = []
        for _ in range(3):
            data = order_data()
            request = step_request("create_order", data)
            await execute(cluster, "order", request)
            created.append((data.order_id, request))
        await compensate(cluster, "order", with_action(created[0][1], "cancel_order"))

        first = await cluster.order.ListOrders(order_pb2.ListOrdersRequest(page_size=2))
        rest = await cluster.order.ListOrders(
            order_pb2.ListOrdersRequest(page_size=2, page_token=first.next_page_token)
        )
        listed = [o.order_id for o in [*first.orders, *rest.orders]]
        assert listed == [order_id for order_id, _ in reversed(created)]
        assert rest.next_page_token == ""
        cancelled = await cluster.order.ListOrders(
            order_pb2.ListOrdersRequest(status=order_pb2.ORDER_STATUS_CANCELLED)
        )
        assert [o.order_id for o in cancelled.orders] == [created[0][0]]

    async def test_list_orders_names_a_bad_page_size_or_token(self, cluster: Cluster) -> None:
        for request, field in [
            (order_pb2.ListOrdersRequest(page_size=-1), "page_size"),
            (order_pb2.ListOrdersRequest(page_size=501), "page_size"),
            (order_pb2.ListOrdersRequest(page_token="not-a-token"), "page_token"),
        ]:
            refused = await failure(cluster.order.ListOrders(request))
            assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


class TestInventory:
    async def test_reserve_holds_stock_for_the_saga(self, cluster: Cluster) -> None:
        items = [
            common_pb2.LineItem(sku="SKU-LAMP", quantity=2),
            common_pb2.LineItem(sku="SKU-MUG", quantity=5),
            common_pb2.LineItem(sku="SKU-LAMP", quantity=1),
        ]
        lamps, mugs = await stock(cluster, "SKU-LAMP"), await stock(cluster, "SKU-MUG")
        request = step_request("reserve", order_data(items=items))
        reply = await execute(cluster, "inventory", request)

        assert reply.outcome == APPLIED
        assert await stock(cluster, "SKU-LAMP") == (lamps[0] - 3, lamps[1] + 3)
        assert await stock(cluster, "SKU-MUG") == (mugs[0] - 5, mugs[1] + 5)
        reservation = await cluster.inventory.GetReservation(
            inventory_pb2.GetReservationRequest(saga_id=request.saga_id)
        )
        assert reservation.status == inventory_pb2.RESERVATION_STATUS_RESERVED
        assert sorted((ln.sku, ln.quantity) for ln in reservation.lines) == [
            ("SKU-LAMP", 3),
            ("SKU-MUG", 5),
        ]

    async def test_release_gives_the_reserved_stock_back(self, cluster: Cluster) -> None:
        before = await stock(cluster, "SKU-MUG")
        request = step_request("reserve", order_data())
        await execute(cluster, "inventory", request)
        reply = await compensate(cluster, "inventory", with_action(request, "release"))

        assert reply.outcome == APPLIED
        assert await stock(cluster, "SKU-MUG") == before
        reservation = await cluster.inventory.GetReservation(
            inventory_pb2.GetReservationRequest(saga_id=request.saga_id)
        )
        assert reservation.status == inventory_pb2.RESERVATION_STATUS_RELEASED

    async def test_release_gives_back_what_was_reserved_not_what_it_is_told(
        self, cluster: Cluster
    ) -> None:
        before = await stock(cluster, "SKU-MUG")
        data = order_data()  # 3 mugs
        request = step_request("reserve", data)
        await execute(cluster, "inventory", request)
        reserved = await stock(cluster, "SKU-MUG")
        lying = with_action(request, "release")
        data.items[0].quantity = 9
        lying.payload.Pack(data)
        refused = await failure(compensate(cluster, "inventory", lying))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REQUEST_MISMATCH",
        )
        assert await stock(cluster, "SKU-MUG") == reserved
        await compensate(cluster, "inventory", with_action(request, "release"))
        assert await stock(cluster, "SKU-MUG") == before

    async def test_the_last_unit_can_be_reserved(self, cluster: Cluster) -> None:
        items = [common_pb2.LineItem(sku="SKU-RARE", quantity=1)]
        await execute(cluster, "inventory", step_request("reserve", order_data(items=items)))
        assert await stock(cluster, "SKU-RARE") == (0, 1)

    async def test_list_stock_shows_every_seeded_sku(self, cluster: Cluster) -> None:
        listed = await listing(
            cluster.inventory.ListStock, inventory_pb2.ListStockRequest(), "stock"
        )
        assert [s.sku for s in listed] == ["SKU-BOOK", "SKU-LAMP", "SKU-MUG", "SKU-RARE"]


class TestPayment:
    async def test_charge_takes_the_total_and_records_a_captured_charge(
        self, cluster: Cluster
    ) -> None:
        before = await balance(cluster, "bob")
        data = order_data(
            customer_id="bob", total=common_pb2.Money(amount_minor=4_321, currency="EUR")
        )
        request = step_request("charge", data)
        reply = await execute(cluster, "payment", request)

        assert reply.outcome == APPLIED
        charge_id = result_of(reply).charge_id
        assert charge_id
        assert await balance(cluster, "bob") == before - 4_321
        charges = await listing(
            cluster.payment.ListCharges,
            payment_pb2.ListChargesRequest(customer_id="bob"),
            "charges",
        )
        assert len(charges) == 1
        charge = charges[0]
        assert (charge.charge_id, charge.saga_id, charge.status) == (
            charge_id,
            request.saga_id,
            payment_pb2.CHARGE_STATUS_CAPTURED,
        )
        assert charge.amount == common_pb2.Money(amount_minor=4_321, currency="EUR")

    async def test_refund_returns_the_money(self, cluster: Cluster) -> None:
        before = await balance(cluster, "alice")
        request = step_request("charge", order_data())
        await execute(cluster, "payment", request)
        reply = await compensate(cluster, "payment", with_action(request, "refund"))

        assert reply.outcome == APPLIED
        assert await balance(cluster, "alice") == before
        charges = await cluster.payment.ListCharges(
            payment_pb2.ListChargesRequest(saga_id=request.saga_id)
        )
        assert [c.status for c in charges.charges] == [payment_pb2.CHARGE_STATUS_REFUNDED]

    async def test_refund_returns_what_was_charged_not_what_it_is_told(
        self, cluster: Cluster
    ) -> None:
        before = await balance(cluster, "alice")
        data = order_data()  # 24.00
        request = step_request("charge", data)
        await execute(cluster, "payment", request)
        lying = with_action(request, "refund")
        data.total.amount_minor = 99_999
        lying.payload.Pack(data)
        refused = await failure(compensate(cluster, "payment", lying))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REQUEST_MISMATCH",
        )
        assert await balance(cluster, "alice") == before - 2_400
        await compensate(cluster, "payment", with_action(request, "refund"))
        assert await balance(cluster, "alice") == before

    async def test_the_whole_balance_can_be_charged(self, cluster: Cluster) -> None:
        total = common_pb2.Money(amount_minor=1_000, currency="EUR")
        data = order_data(customer_id="carol", total=total)
        await execute(cluster, "payment", step_request("charge", data))
        assert await balance(cluster, "carol") == 0


class TestShipping:
    async def test_schedule_creates_a_shipment_with_a_tracking_number(
        self, cluster: Cluster
    ) -> None:
        data = order_data(destination="Reykjavik")
        request = step_request("schedule", data)
        reply = await execute(cluster, "shipping", request)

        assert reply.outcome == APPLIED
        result = result_of(reply)
        assert re.fullmatch(r"SW[0-9A-F]{12}", result.tracking_number)
        by_id = await cluster.shipping.GetShipment(
            shipping_pb2.GetShipmentRequest(shipment_id=result.shipment_id)
        )
        by_saga = await cluster.shipping.GetShipmentBySaga(
            shipping_pb2.GetShipmentBySagaRequest(saga_id=request.saga_id)
        )
        assert by_id == by_saga
        assert (by_id.order_id, by_id.destination, by_id.tracking_number, by_id.status) == (
            data.order_id,
            "Reykjavik",
            result.tracking_number,
            shipping_pb2.SHIPMENT_STATUS_SCHEDULED,
        )

    async def test_cancel_cancels_the_shipment(self, cluster: Cluster) -> None:
        request = step_request("schedule", order_data())
        scheduled = result_of(await execute(cluster, "shipping", request))
        reply = await compensate(cluster, "shipping", with_action(request, "cancel"))

        assert reply.outcome == APPLIED
        shipment = await cluster.shipping.GetShipment(
            shipping_pb2.GetShipmentRequest(shipment_id=scheduled.shipment_id)
        )
        assert shipment.status == shipping_pb2.SHIPMENT_STATUS_CANCELLED
        assert shipment.tracking_number == scheduled.tracking_number

    async def test_unknown_shipment_is_not_found(self, cluster: Cluster) -> None:
        missing = await failure(
            cluster.shipping.GetShipment(shipping_pb2.GetShipmentRequest(shipment_id="nope"))
        )
        assert missing.code == grpc.StatusCode.NOT_FOUND
