"""Events on NATS JetStream: poison events terminated and recorded, lag reported.

The services run in-process on the machine's NATS server, each test on a stream of its
own (tests/nats_support.py); the tests that go through the services' stores (poison
events recorded, consumers' lag, a cut relay) run on SQLite and on PostgreSQL. Poison
events are published straight to the stream under the order service's subjects, as only
a broken or hostile publisher would.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from google.protobuf.message import Message

from common.certs import ensure_certs
from common.config import SERVICE_NAMES, Endpoints, EventSettings, TlsSettings
from common.nats_events import MSG_ID_HEADER, NatsEvents, encode
from common.server import start_server
from common.tls import Identity
from protos.sagawire.v1 import (
    admin_pb2,
    common_pb2,
    coordinator_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    order_saga_pb2,
    participant_pb2,
)
from services import saga_events
from services.choreography import CHOREOGRAPHED_ONLY
from services.launcher import spec_of
from services.runtime import DomainService
from tests.coordinator_support import Stack, start_coordinator, write_definitions
from tests.event_support import create_order_request
from tests.nats_support import Events, PrivateNats, ServerTls, events_over, permissions_config
from tests.postgres_support import STORES, store_on
from tests.support import (
    Cluster,
    free_port,
    listing,
    service_settings,
    start_cluster,
    wait_until,
)


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    async with events_over("nats") as chosen:
        yield chosen


@pytest.fixture(params=STORES)
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, events: Events
) -> AsyncIterator[Cluster]:
    async with store_on(request.param) as store:
        overrides = {**events.settings(), **store.settings()}
        running = await start_cluster(tmp_path, overrides=overrides)
        try:
            yield running
        finally:
            await running.stop()


def _order_created(subject: str, data: Message, sequence: int, source: str = "order") -> bytes:
    event = events_pb2.Event(
        id=str(uuid.uuid4()),
        source=source,
        type=saga_events.ORDER_CREATED,
        subject=subject,
        sequence=sequence,
        headers=CHOREOGRAPHED_ONLY,
    )
    event.data.Pack(data)
    return event.SerializeToString()


def _good_order(sku: str, quantity: int) -> events_pb2.OrderSagaEvent:
    return events_pb2.OrderSagaEvent(
        data=order_saga_pb2.OrderSagaData(
            order_id=str(uuid.uuid4()),
            customer_id="alice",
            items=[common_pb2.LineItem(sku=sku, quantity=quantity)],
            destination="Berlin",
        ),
        mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
        step="create_order",
    )


async def test_poison_events_are_recorded_terminated_and_the_stream_goes_on(
    cluster: Cluster, events: Events
) -> None:
    subject = f"{events.prefix}.order.choreography.sagawire.order.created"
    client = await nats.connect(events.url)
    try:
        js = client.jetstream()
        # Not an OrderSagaEvent: the reaction fails for good.
        wrong_data = events_pb2.Event.FromString(
            _order_created("saga-poison", common_pb2.Money(), 1)
        )
        payload, headers = encode(wrong_data)
        await js.publish(subject, payload, headers=headers)
        # Not an event at all.
        await js.publish(subject, b"\xff\xff not protobuf", headers={MSG_ID_HEADER: "garbage-1"})
        # Under order's subject, but from someone else.
        forged = events_pb2.Event.FromString(
            _order_created("saga-forged", _good_order("SKU-LAMP", 1), 3, source="payment")
        )
        payload, headers = encode(forged)
        await js.publish(subject, payload, headers=headers)
        good = events_pb2.Event.FromString(
            _order_created(str(uuid.uuid4()), _good_order("SKU-LAMP", 2), 4)
        )
        payload, headers = encode(good)
        await js.publish(subject, payload, headers=headers)

        stock = inventory_pb2.GetStockRequest(sku="SKU-LAMP")

        async def reserved() -> bool:
            return (await cluster.inventory.GetStock(stock)).reserved == 2

        await wait_until(reserved, timeout=20, message="the good event after the poison ones")
        listed = await listing(
            events_pb2_grpc.EventStreamStub(cluster.channel("inventory")).ListPoisonEvents,
            events_pb2.ListPoisonEventsRequest(),
            "events",
        )
        by_id = {p.event_id: p for p in listed}
        assert set(by_id) == {wrong_data.id, "garbage-1", forged.id}
        assert "OrderSagaEvent" in by_id[wrong_data.id].error
        assert "not an event" in by_id["garbage-1"].error
        assert "published by 'payment'" in by_id[forged.id].error

        # Nothing left to deliver or to acknowledge: the poison ones were terminated.
        async def settled() -> bool:
            info = await js.consumer_info(events.prefix, "inventory-order")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(settled, message="inventory's consumer to have nothing pending")
    finally:
        await client.close()


async def test_consumer_lag_is_read_from_jetstream(cluster: Cluster) -> None:
    order = cluster.servers["order"].app
    assert isinstance(order, DomainService) and order.relay is not None

    def followers() -> set[str]:
        assert order.relay is not None
        return set(order.relay.lags.lags())

    # Every service that reacts to order's events has a durable consumer on them.
    reacting = {
        name
        for name, server in cluster.servers.items()
        if isinstance(server.app, DomainService)
        and any(c.producer == "order" for c in server.app.consumers)
    }
    assert reacting
    found = await wait_until(
        lambda: followers() >= reacting,
        timeout=15,
        message="the relay to read its consumers' lag",
    )
    assert found
    assert all(lag >= 0 for lag in order.relay.lags.lags().values())


async def test_streams_and_consumers_are_created_once_whoever_starts_first(
    events: Events,
) -> None:
    first = NatsEvents(_settings(events), Identity.from_env("order"))
    second = NatsEvents(_settings(events), Identity.from_env("inventory"))
    try:
        js = await first.jetstream()
        await second.jetstream()  # the same stream again: no error, nothing changed
        info = await js.stream_info(events.prefix)
        assert info.config.subjects == [f"{events.prefix}.>"]
        assert info.config.duplicate_window == 120
    finally:
        await first.close()
        await second.close()


def _settings(events: Events) -> EventSettings:
    return EventSettings(events=events.url, events_prefix=events.prefix)


async def test_a_cut_relay_starts_over_and_the_stream_keeps_each_event_once(
    cluster: Cluster, events: Events
) -> None:
    coordinator = cluster.participant("order")
    first = create_order_request()
    await coordinator.Execute(first)

    async def reserved(count: int) -> bool:
        stock = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
        return bool(stock.reserved == count)

    await wait_until(lambda: reserved(1), timeout=20, message="the first order's reservation")
    cut = await cluster.admin("order").CutStreams(admin_pb2.CutStreamsRequest())
    assert cut.streams >= 1  # the relay counts as one
    second = create_order_request()
    await coordinator.Execute(second)
    await wait_until(lambda: reserved(2), timeout=20, message="the second order's reservation")
    counts = await events.message_counts("order.>")
    assert sum(n for s, n in counts.items() if s.endswith(".order.created")) == 2


async def test_over_tls_each_service_presents_its_own_certificate(tmp_path: Path) -> None:
    certs = TlsSettings().certs_directory  # the session's CA (tests/conftest.py)
    ensure_certs(certs, ["nats"])  # the server's certificate, from the same CA
    tls = ServerTls(certs / "nats.crt", certs / "nats.key", certs / "ca.crt")
    server = PrivateNats(tmp_path, tls)
    await server.start()
    try:
        assert server.url.startswith("tls://")
        events = Events("nats", server.url, "tls")
        cluster = await start_cluster(
            tmp_path / "services", names=("order", "inventory"), overrides=events.settings()
        )
        try:
            await cluster.participant("order").Execute(create_order_request(sku="SKU-BOOK"))
            stock = inventory_pb2.GetStockRequest(sku="SKU-BOOK")

            async def reserved() -> bool:
                return bool((await cluster.inventory.GetStock(stock)).reserved == 1)

            await wait_until(reserved, timeout=20, message="inventory to react over TLS")
        finally:
            await cluster.stop()
        # Without a certificate of the stack's CA, the server refuses the connection.
        anonymous = ssl.create_default_context(cafile=str(tls.ca))
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            client = await nats.connect(
                server.url, tls=anonymous, allow_reconnect=False, connect_timeout=2
            )
            await client.jetstream().account_info()
    finally:
        server.stop()


async def test_with_nats_permissions_each_service_publishes_only_as_itself(
    tmp_path: Path,
) -> None:
    passwords = {name: f"pw-{name}" for name in (*SERVICE_NAMES, "coordinator")}
    server = PrivateNats(
        tmp_path,
        config=permissions_config("sagawire", passwords),
        probe=("coordinator", passwords["coordinator"]),
    )
    await server.start()
    try:
        ports = {name: free_port() for name in SERVICE_NAMES}
        endpoints = Endpoints(**{f"{n}_addr": f"127.0.0.1:{p}" for n, p in ports.items()})
        servers = {}
        for name in SERVICE_NAMES:
            settings = service_settings(
                tmp_path / "services",
                port=ports[name],
                events=server.url_as(name, passwords[name]),
                events_prefix="sagawire",
            )
            app = DomainService(spec_of(name), settings, endpoints)
            servers[name] = await start_server(app, settings)
        cluster = Cluster(servers)
        running, app_ = await start_coordinator(
            cluster,
            tmp_path / "coordinator",
            write_definitions(tmp_path / "sagas.yaml"),
            mode="choreography",
            events=server.url_as("coordinator", passwords["coordinator"]),
            events_prefix="sagawire",
        )
        stack = Stack(cluster, running.address, running, app_)
        try:
            reply = await stack.place("alice", [("SKU-MUG", 1)], "Berlin", wait=True)
            assert reply.status == coordinator_pb2.SAGA_STATUS_COMPLETED
        finally:
            await stack.stop_coordinator()
            await cluster.stop()
        # Inventory's user may not publish under order's subjects: nothing is stored.
        client = await nats.connect(
            server.url_as("inventory", passwords["inventory"]), error_cb=_quiet
        )
        try:
            js = client.jetstream()
            forged = f"sagawire.order.choreography.{saga_events.ORDER_CREATED}"
            before = (await js.stream_info("sagawire", subjects_filter=forged)).state.messages
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await js.publish(forged, b"forged", timeout=1)
            after = (await js.stream_info("sagawire", subjects_filter=forged)).state.messages
            assert after == before
        finally:
            await client.close()
    finally:
        server.stop()


async def _quiet(error: Exception) -> None:
    """The permission violation is the point of the test, not news."""
