"""Who may call what, against real servers on 127.0.0.1: mutual TLS and the authorisation table.

Each refused call is checked for its status code and for having no effect: the
reservation it asked for is not there and stock is unchanged (the handler never ran).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.certs import COORDINATOR, OPERATOR, ensure_certs
from common.config import TlsSettings
from common.server import RunningServer, start_server
from common.tls import PLAINTEXT_WARNING, Identity
from protos.sagawire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
)
from services.launcher import spec_of
from services.runtime import DomainService
from tests.integration.steps import order_data, step_request
from tests.support import Cluster, open_channel, service_settings

MUG_RESERVATION = "reserve"


def reserve_request() -> participant_pb2.StepRequest:
    return step_request(MUG_RESERVATION, order_data())


async def stock(cluster: Cluster) -> tuple[int, int]:
    level = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
    return level.available, level.reserved


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    """The status a refused call ended with (it must be refused)."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    code: grpc.StatusCode = refused.value.code()
    return code


def participant_as(
    cluster: Cluster, service: str, identity: str
) -> participant_pb2_grpc.ParticipantStub:
    return participant_pb2_grpc.ParticipantStub(cluster.channel(service, identity))


# --- the transport: mutual TLS ---------------------------------------------------------


async def test_a_plaintext_client_is_refused_and_nothing_happens(cluster: Cluster) -> None:
    before = await stock(cluster)
    async with grpc.aio.insecure_channel(cluster.address("inventory")) as plain:
        stub = participant_pb2_grpc.ParticipantStub(plain)
        code = await status_of(stub.Execute(reserve_request(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake never completes
    assert await stock(cluster) == before


async def test_a_client_without_a_certificate_cannot_connect(
    cluster: Cluster, certificates: Path
) -> None:
    before = await stock(cluster)
    only_ca = grpc.ssl_channel_credentials((certificates / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(cluster.address("inventory"), only_ca) as anonymous:
        stub = participant_pb2_grpc.ParticipantStub(anonymous)
        assert await status_of(stub.Execute(reserve_request(), timeout=5)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        health = health_pb2_grpc.HealthStub(anonymous)
        assert await status_of(health.Check(health_pb2.HealthCheckRequest(), timeout=5)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    assert await stock(cluster) == before


async def test_a_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    ensure_certs(tmp_path / "other")
    impostor = Identity(COORDINATOR, TlsSettings(certs_dir=tmp_path / "other"))
    before = await stock(cluster)
    async with impostor.aio_channel(cluster.address("inventory")) as channel:
        stub = participant_pb2_grpc.ParticipantStub(channel)
        code = await status_of(stub.Execute(reserve_request(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert await stock(cluster) == before


async def test_a_client_accepts_only_the_process_it_expects(cluster: Cluster) -> None:
    """The coordinator's channel to "payment" refuses inventory's server (its certificate)."""
    wrong = open_channel(cluster.address("inventory"), COORDINATOR, peer="payment")
    async with wrong:
        stub = participant_pb2_grpc.ParticipantStub(wrong)
        code = await status_of(stub.Execute(reserve_request(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE


# --- the table: who may call what -------------------------------------------------------


async def test_only_the_coordinator_may_execute_and_compensate(cluster: Cluster) -> None:
    before = await stock(cluster)
    for caller in ("payment", "order", OPERATOR):
        stub = participant_as(cluster, "inventory", caller)
        for call in (stub.Execute, stub.Compensate):
            code = await status_of(call(reserve_request(), timeout=5))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (caller, call)
    assert await stock(cluster) == before

    coordinator = participant_as(cluster, "inventory", COORDINATOR)
    await coordinator.Execute(reserve_request(), timeout=5)
    available, reserved = await stock(cluster)
    assert (available, reserved) == (before[0] - 3, before[1] + 3)


async def test_the_read_apis_answer_the_coordinator_and_the_operator_only(
    cluster: Cluster,
) -> None:
    request = payment_pb2.ListAccountsRequest()
    for caller in (COORDINATOR, OPERATOR):
        stub = payment_pb2_grpc.PaymentStub(cluster.channel("payment", caller))
        assert (await stub.ListAccounts(request, timeout=5)).accounts
    for caller in ("order", "inventory", "shipping"):
        stub = payment_pb2_grpc.PaymentStub(cluster.channel("payment", caller))
        code = await status_of(stub.ListAccounts(request, timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED, caller
    inventory = inventory_pb2_grpc.InventoryStub(cluster.channel("inventory", "payment"))
    code = await status_of(inventory.ListStock(inventory_pb2.ListStockRequest(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_admin_answers_the_operator_only_on_a_port_of_its_own(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="reserve", fail_next=-1)])
    host, _, port = cluster.admin_address("inventory").rpartition(":")
    assert host == "127.0.0.1" and cluster.address("inventory") != f"{host}:{port}"
    for caller in (COORDINATOR, "inventory", "payment"):
        code = await status_of(cluster.admin("inventory", caller).SetFaults(plan, timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED, caller
    # Not on the service's own port, to anyone.
    on_service_port = admin_pb2_grpc.AdminStub(cluster.channel("inventory", OPERATOR))
    code = await status_of(on_service_port.GetFaults(admin_pb2.GetFaultsRequest(), timeout=5))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    operator = cluster.admin("inventory")
    assert not (await operator.GetFaults(admin_pb2.GetFaultsRequest(), timeout=5)).actions


async def test_the_event_stream_is_followed_by_the_stack_only(cluster: Cluster) -> None:
    created = step_request("create_order", order_data())
    await participant_as(cluster, "order", COORDINATOR).Execute(created, timeout=5)
    request = events_pb2.SubscribeRequest(from_sequence=1, consumer="test")
    for caller in ("inventory", COORDINATOR):
        stub = events_pb2_grpc.EventStreamStub(cluster.channel("order", caller))
        stream = stub.Subscribe(request, timeout=5)
        batch = await stream.read()
        assert batch.events[0].subject == created.saga_id
        stream.cancel()
    poison = events_pb2_grpc.EventStreamStub(cluster.channel("order", "payment"))
    code = await status_of(poison.ListPoisonEvents(events_pb2.ListPoisonEventsRequest()))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_health_answers_every_identity(cluster: Cluster) -> None:
    for caller in (COORDINATOR, OPERATOR, "shipping"):
        health = health_pb2_grpc.HealthStub(cluster.channel("inventory", caller))
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- a server that asks for no client certificate ----------------------------------------


@pytest.fixture
async def no_client_auth(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Inventory with SAGAWIRE_TLS_CLIENT_AUTH=none (meant for the coordinator's public port)."""
    settings = service_settings(tmp_path, tls_client_auth="none")
    running = await start_server(DomainService(spec_of("inventory"), settings), settings)
    try:
        yield running
    finally:
        await running.stop()


async def test_without_client_certificates_health_is_open_and_the_rest_unauthenticated(
    no_client_auth: RunningServer, certificates: Path
) -> None:
    only_ca = grpc.ssl_channel_credentials((certificates / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(no_client_auth.address, only_ca) as anonymous:
        health = health_pb2_grpc.HealthStub(anonymous)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        stub = participant_pb2_grpc.ParticipantStub(anonymous)
        code = await status_of(stub.Execute(reserve_request(), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        inventory = inventory_pb2_grpc.InventoryStub(anonymous)
        code = await status_of(inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG")))
        assert code == grpc.StatusCode.UNAUTHENTICATED


# --- plaintext, by name only -------------------------------------------------------------


async def test_plaintext_mode_is_asked_for_by_name_and_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.tls._warned", False)
    settings = service_settings(tmp_path, tls=False)
    with caplog.at_level(logging.WARNING):
        running = await start_server(DomainService(spec_of("inventory"), settings), settings)
    try:
        assert any(
            r.levelno == logging.WARNING and r.getMessage() == PLAINTEXT_WARNING
            for r in caplog.records
        )
        # Trusted-network mode: nobody has an identity, so the table cannot tell callers
        # apart and lets the call through.
        async with grpc.aio.insecure_channel(running.address) as plain:
            stub = inventory_pb2_grpc.InventoryStub(plain)
            await stub.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"), timeout=5)
    finally:
        await running.stop()
