"""A poison event is recorded, listed and skipped; the stream keeps flowing."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf.message import Message

from common import inbox, outbox
from common.config import Endpoints
from common.server import start_server
from common.store import Database
from common.stream import EventStreamServicer
from protos.sagawire.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    order_saga_pb2,
    participant_pb2,
)
from services import saga_events
from services.choreography import CHOREOGRAPHED_ONLY
from services.launcher import spec_of
from services.runtime import DomainService
from tests.support import free_port, listing, open_channel, service_settings, wait_until


class EventSource:
    """A bare event producer: a real outbox served by the real EventStream servicer.

    It stands in for an order service that publishes a malformed event, which the
    real one never does.
    """

    # It poses as the order service, down to the certificate it serves with.
    identity = "order"
    service_names: Sequence[str] = ("sagawire.v1.EventStream",)

    def __init__(self, path: Path) -> None:
        self.db = Database(path, schema=outbox.SCHEMA + inbox.SCHEMA)
        self.outbox = outbox.Outbox(self.db, source="order")

    def register(self, server: grpc.aio.Server) -> None:
        events_pb2_grpc.add_EventStreamServicer_to_server(
            EventStreamServicer(self.outbox, self.db), server
        )

    async def start(self) -> None:
        await self.db.open()

    async def drain(self) -> None:
        await self.outbox.close()

    async def stop(self) -> None:
        await self.db.close()

    async def publish(self, event_type: str, subject: str, data: Message) -> None:
        def write(conn: sqlite3.Connection) -> None:
            outbox.append(conn, event_type, subject, data, headers=CHOREOGRAPHED_ONLY)

        await self.db.transaction(write)
        await self.outbox.notify()


async def test_poison_event_is_skipped_listed_and_the_stream_continues(tmp_path: Path) -> None:
    source = EventSource(tmp_path / "source.db")
    source_port = free_port()
    source_server = await start_server(source, service_settings(tmp_path, port=source_port))
    endpoints = Endpoints(order_addr=f"127.0.0.1:{source_port}")
    settings = service_settings(tmp_path)
    inventory = await start_server(
        DomainService(spec_of("inventory"), settings, endpoints), settings
    )
    channel = open_channel(inventory.address)
    try:
        # Not an OrderSagaEvent at all: undecodable for the reaction.
        await source.publish(saga_events.ORDER_CREATED, "saga-poison", common_pb2.Money())
        good = events_pb2.OrderSagaEvent(
            data=order_saga_pb2.OrderSagaData(
                order_id=str(uuid.uuid4()),
                customer_id="alice",
                items=[common_pb2.LineItem(sku="SKU-LAMP", quantity=2)],
                destination="Berlin",
            ),
            mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
            step="create_order",
        )
        await source.publish(saga_events.ORDER_CREATED, "saga-good", good)

        stock = inventory_pb2.GetStockRequest(sku="SKU-LAMP")
        stub = inventory_pb2_grpc.InventoryStub(channel)

        async def reserved() -> bool:
            return (await stub.GetStock(stock)).reserved == 2

        await wait_until(reserved, message="the good event after the poison one to apply")
        listed = await listing(
            events_pb2_grpc.EventStreamStub(channel).ListPoisonEvents,
            events_pb2.ListPoisonEventsRequest(),
            "events",
        )
        assert [(p.producer, p.sequence, p.type) for p in listed] == [
            ("order", 1, saga_events.ORDER_CREATED)
        ]
        assert "OrderSagaEvent" in listed[0].error
    finally:
        await channel.close()
        await inventory.stop()
        await source_server.stop()
