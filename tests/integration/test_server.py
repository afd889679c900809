"""The common server bootstrap, over real gRPC: health, reflection, fault injection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.server import RunningServer, start_server
from protos.sagawire.v1 import admin_pb2, inventory_pb2, participant_pb2
from services.launcher import spec_of
from services.runtime import DomainService
from tests.integration.steps import (
    compensate,
    execute,
    failure,
    order_data,
    step_request,
    with_action,
)
from tests.support import Cluster, open_channel, service_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
QUERY_SERVICES = {
    "order": "sagawire.v1.Order",
    "inventory": "sagawire.v1.Inventory",
    "payment": "sagawire.v1.Payment",
    "shipping": "sagawire.v1.Shipping",
}


@pytest.fixture
async def inventory_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """One inventory service on its own, so a test can stop it."""
    settings = service_settings(tmp_path)
    running = await start_server(DomainService(spec_of("inventory"), settings), settings)
    try:
        yield running
    finally:
        await running.stop()


async def test_health_is_serving_for_every_service_once_started(
    inventory_server: RunningServer,
) -> None:
    async with open_channel(inventory_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "sagawire.v1.Participant", "sagawire.v1.Inventory"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == SERVING, name
        # Admin is served on a port of its own, not here.
        for unknown_name in ("sagawire.v1.Nope", "sagawire.v1.Admin"):
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await health.Check(health_pb2.HealthCheckRequest(service=unknown_name))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_goes_not_serving_on_shutdown(inventory_server: RunningServer) -> None:
    async with open_channel(inventory_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="sagawire.v1.Participant"))
        assert (await watch.read()).status == SERVING

        stopping = asyncio.create_task(inventory_server.stop())
        update = await asyncio.wait_for(watch.read(), timeout=5)
        assert update.status == NOT_SERVING
        watch.cancel()  # let the graceful stop finish without waiting out its grace
        await asyncio.wait_for(stopping, timeout=5)

        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_is_idempotent(inventory_server: RunningServer) -> None:
    await asyncio.gather(inventory_server.stop(), inventory_server.stop())
    await inventory_server.stop()


async def reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([request]))
    response: reflection_pb2.ServerReflectionResponse = await call.read()
    call.cancel()
    return response


@pytest.mark.parametrize("service", sorted(QUERY_SERVICES))
async def test_reflection_lists_the_services(cluster: Cluster, service: str) -> None:
    listed = await reflect(
        cluster.channel(service), reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "sagawire.v1.Participant",
        QUERY_SERVICES[service],
        "sagawire.v1.EventStream",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # The Admin API's own port lists it (what grpcurl needs there).
    admin = open_channel(cluster.admin_address(service), peer=service)
    try:
        listed = await reflect(admin, reflection_pb2.ServerReflectionRequest(list_services=""))
    finally:
        await admin.close()
    names = {s.name for s in listed.list_services_response.service}
    assert names == {"sagawire.v1.Admin", "grpc.reflection.v1alpha.ServerReflection"}


async def test_reflection_serves_the_contract_itself(cluster: Cluster) -> None:
    """What grpcurl needs to call Execute without the .proto files."""
    found = await reflect(
        cluster.channel("payment"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="sagawire.v1.Participant"),
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    participant = next(f for f in files if f.name == "protos/sagawire/v1/participant.proto")
    methods = [m.name for s in participant.service for m in s.method]
    assert methods == ["Execute", "Compensate", "SagasFinished"]


async def set_faults(cluster: Cluster, service: str, plan: admin_pb2.FaultPlan) -> None:
    await cluster.admin(service).SetFaults(plan)


async def mug_stock(cluster: Cluster) -> tuple[int, int]:
    level = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
    return level.available, level.reserved


async def test_fail_next_n_fails_n_times_without_effect_then_succeeds(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="reserve", fail_next=2)])
    await set_faults(cluster, "inventory", plan)
    before = await mug_stock(cluster)
    request = step_request("reserve", order_data())

    for _ in range(2):
        failed = await failure(execute(cluster, "inventory", request))
        assert failed.code == grpc.StatusCode.UNAVAILABLE
        assert await mug_stock(cluster) == before
    reply = await execute(cluster, "inventory", request)

    # APPLIED, not REPLAYED: the injected failures never reached the barrier.
    assert reply.outcome == participant_pb2.BARRIER_OUTCOME_APPLIED
    assert await mug_stock(cluster) == (before[0] - 3, before[1] + 3)
    counts = await cluster.admin("inventory").GetCallCounts(admin_pb2.GetCallCountsRequest())
    assert counts.calls["reserve"] == 3


async def test_fail_always_until_the_plan_is_cleared(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="charge", fail_next=-1)])
    await set_faults(cluster, "payment", plan)
    request = step_request("charge", order_data())
    for _ in range(3):
        assert (await failure(execute(cluster, "payment", request))).code == (
            grpc.StatusCode.UNAVAILABLE
        )
    # Other actions are not affected.
    refund = with_action(step_request("charge", order_data()), "refund")
    assert (await compensate(cluster, "payment", refund)).outcome == (
        participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION
    )

    await set_faults(cluster, "payment", admin_pb2.FaultPlan())
    assert (await execute(cluster, "payment", request)).outcome == (
        participant_pb2.BARRIER_OUTCOME_APPLIED
    )


async def test_compensations_can_be_failed_too(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="cancel", fail_next=1)])
    await set_faults(cluster, "shipping", plan)
    request = step_request("schedule", order_data())
    await execute(cluster, "shipping", request)
    undo = with_action(request, "cancel")
    assert (await failure(compensate(cluster, "shipping", undo))).code == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert (await compensate(cluster, "shipping", undo)).outcome == (
        participant_pb2.BARRIER_OUTCOME_APPLIED
    )


async def failure_pattern(cluster: Cluster, plan: admin_pb2.FaultPlan, calls: int) -> list[bool]:
    """Which of ``calls`` (null compensations, cheap and unrelated) the plan fails."""
    await set_faults(cluster, "order", plan)
    pattern = []
    for _ in range(calls):
        request = step_request("cancel_order", order_data())
        try:
            await compensate(cluster, "order", request)
            pattern.append(False)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            pattern.append(True)
    return pattern


async def test_seeded_unavailable_rate_is_deterministic(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(unavailable_rate=0.5, seed=1234)
    first = await failure_pattern(cluster, plan, 24)
    again = await failure_pattern(cluster, plan, 24)
    other = await failure_pattern(cluster, admin_pb2.FaultPlan(unavailable_rate=0.5, seed=9), 24)

    assert first == again
    assert 0 < sum(first) < 24
    assert other != first


async def test_latency_is_added_before_the_call(cluster: Cluster) -> None:
    plan = admin_pb2.FaultPlan(
        actions=[admin_pb2.ActionFault(action="create_order", latency_ms=300)]
    )
    await set_faults(cluster, "order", plan)
    started = time.monotonic()
    await execute(cluster, "order", step_request("create_order", order_data()))
    assert time.monotonic() - started >= 0.3
    current = await cluster.admin("order").GetFaults(admin_pb2.GetFaultsRequest())
    assert current == plan


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        (admin_pb2.FaultPlan(unavailable_rate=1.5), "unavailable_rate"),
        (admin_pb2.FaultPlan(latency_ms=-1), "latency_ms"),
        (
            admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="reserve", fail_next=-2)]),
            "actions.reserve.fail_next",
        ),
    ],
)
async def test_a_bad_fault_plan_is_refused_and_changes_nothing(
    cluster: Cluster, plan: admin_pb2.FaultPlan, field: str
) -> None:
    good = admin_pb2.FaultPlan(latency_ms=1)
    await set_faults(cluster, "inventory", good)
    refused = await failure(cluster.admin("inventory").SetFaults(plan))
    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert await cluster.admin("inventory").GetFaults(admin_pb2.GetFaultsRequest()) == good


async def test_a_fault_rule_for_an_action_the_service_does_not_run_is_refused(
    cluster: Cluster,
) -> None:
    good = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="refund", fail_next=1)])
    await set_faults(cluster, "payment", good)
    plan = admin_pb2.FaultPlan(actions=[admin_pb2.ActionFault(action="chrage", fail_next=1)])
    refused = await failure(cluster.admin("payment").SetFaults(plan))
    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, "actions.chrage")
    assert "unknown action 'chrage' (this service runs: charge, refund" in refused.message
    assert await cluster.admin("payment").GetFaults(admin_pb2.GetFaultsRequest()) == good
