"""What callers see when a step cannot run: bad input, a business "no", or a bug.

- bad input is INVALID_ARGUMENT naming the field, and writes nothing: not the
  business change, and not even a barrier record (the same key still executes);
- a business rejection is FAILED_PRECONDITION with a google.rpc ErrorInfo
  reason, changes nothing, is replayed on retry, and its compensation is null;
- the same action under a second step name of one saga is refused (FAILED_PRECONDITION,
  REQUEST_MISMATCH) and changes nothing;
- a bug is INTERNAL "internal error", with nothing internal in the status.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from common.grpc_errors import parse_rpc_error
from common.participant import StepContext
from common.store import Connection
from protos.sagawire.v1 import common_pb2, participant_pb2
from services.runtime import DomainService
from tests.integration.steps import (
    PROBES,
    Data,
    compensate,
    execute,
    failure,
    full_state,
    order_data,
    step_request,
    with_action,
)
from tests.support import Cluster

APPLIED = participant_pb2.BARRIER_OUTCOME_APPLIED
REPLAYED = participant_pb2.BARRIER_OUTCOME_REPLAYED
NULL_COMPENSATION = participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION
Request = participant_pb2.StepRequest


def line(sku: str = "SKU-MUG", quantity: int = 1) -> common_pb2.LineItem:
    return common_pb2.LineItem(sku=sku, quantity=quantity)


def eur(amount_minor: int, currency: str = "EUR") -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency=currency)


def set_payload(payload: Any) -> Callable[[Request], None]:
    def mutate(request: Request) -> None:
        request.payload.Pack(payload)

    return mutate


def set_fields(**fields: Any) -> Callable[[Request], None]:
    def mutate(request: Request) -> None:
        for name, value in fields.items():
            setattr(request, name, value)

    return mutate


def clear_payload(request: Request) -> None:
    request.ClearField("payload")


def set_data(**fields: Any) -> Callable[[Request], None]:
    """Replace fields of the request's OrderSagaData payload."""

    def mutate(request: Request) -> None:
        data = Data()
        request.payload.Unpack(data)
        current = {descriptor.name: value for descriptor, value in data.ListFields()}
        request.payload.Pack(Data(**{**current, **fields}))

    return mutate


@dataclass(frozen=True)
class Invalid:
    service: str
    field: str
    mutate: Callable[[Request], None]
    # On a Compensate call instead of an Execute.
    on_compensate: bool = False
    id: str = ""


def everywhere(field: str, mutate: Callable[[Request], None], **kw: Any) -> list[Invalid]:
    return [Invalid(s, field, mutate, **kw) for s in sorted(PROBES)]


INVALID = [
    *everywhere("saga_id", set_fields(saga_id=""), id="empty saga id"),
    *everywhere("saga_id", set_fields(saga_id="s" * 129), id="oversize saga id"),
    *everywhere("step", set_fields(step=""), id="empty step"),
    *everywhere("action", set_fields(action="launch_rockets"), id="unknown action"),
    *everywhere("mode", set_fields(mode=participant_pb2.SagaMode.ValueType(7)), id="bad mode"),
    *everywhere("payload", set_payload(eur(100)), id="payload of another type"),
    *everywhere("payload", clear_payload, id="no payload"),
    *everywhere("payload", set_data(destination="x" * 70_000), id="oversize payload"),
    *everywhere("payload.order_id", set_data(order_id=""), id="empty order id"),
    *everywhere("saga_id", set_fields(saga_id=""), on_compensate=True, id="compensate, no saga"),
    *everywhere("action", set_fields(action="approve_order"), on_compensate=True, id="no undo"),
    Invalid("order", "payload.customer_id", set_data(customer_id=""), id="no customer"),
    Invalid("order", "payload.items", set_data(items=[]), id="no items"),
    Invalid("order", "payload.items[0].quantity", set_data(items=[line(quantity=0)]), id="zero"),
    Invalid("order", "payload.items[0].sku", set_data(items=[line(sku="")]), id="no sku"),
    Invalid("order", "payload.destination", set_data(destination="  "), id="blank destination"),
    Invalid("inventory", "payload.items", set_data(items=[]), id="no items"),
    Invalid("inventory", "payload.items", set_data(items=[line()] * 101), id="too many lines"),
    Invalid(
        "inventory", "payload.items[0].quantity", set_data(items=[line(quantity=-1)]), id="neg"
    ),
    Invalid(
        "inventory",
        "payload.items[1].quantity",
        set_data(items=[line(), line(quantity=10_001)]),
        id="absurd quantity",
    ),
    Invalid("inventory", "payload.items[1].sku", set_data(items=[line(), line(sku="")]), id="sku"),
    Invalid("payment", "payload.customer_id", set_data(customer_id=""), id="no customer"),
    Invalid("payment", "payload.total.amount_minor", set_data(total=eur(0)), id="zero total"),
    Invalid("payment", "payload.total.amount_minor", set_data(total=eur(-5)), id="negative"),
    Invalid("payment", "payload.total.currency", set_data(total=eur(5, "EURO")), id="currency"),
    Invalid("payment", "payload.total.currency", set_data(total=eur(5, "")), id="no currency"),
    Invalid("shipping", "payload.destination", set_data(destination=""), id="no destination"),
    Invalid("shipping", "payload.destination", set_data(destination="x" * 201), id="too long"),
]


@pytest.mark.parametrize("case", INVALID, ids=[f"{c.service}: {c.id}" for c in INVALID])
async def test_bad_input_names_the_field_and_writes_nothing(
    cluster: Cluster, case: Invalid
) -> None:
    probe = PROBES[case.service]
    good = step_request(probe.action, probe.payload())
    bad = with_action(good, probe.compensation if case.on_compensate else probe.action)
    case.mutate(bad)
    before = await full_state(cluster, case.service)

    call = compensate if case.on_compensate else execute
    refused = await failure(call(cluster, case.service, bad))

    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, case.field)
    assert refused.message.startswith(f"{case.field}: ")
    assert await full_state(cluster, case.service) == before
    # Nothing reached the barrier either: the same key still executes, for the first time.
    assert (await execute(cluster, case.service, good)).outcome == APPLIED


@dataclass(frozen=True)
class Rejected:
    service: str
    reason: str
    data: Data = field(default_factory=order_data)


REJECTED = [
    Rejected("inventory", "INSUFFICIENT_STOCK", order_data(items=[line(), line("SKU-RARE", 2)])),
    Rejected("inventory", "UNKNOWN_SKU", order_data(items=[line(), line("SKU-NOPE")])),
    Rejected("order", "UNKNOWN_SKU", order_data(items=[line(), line("SKU-NOPE")])),
    Rejected("payment", "INSUFFICIENT_FUNDS", order_data(customer_id="carol", total=eur(1_001))),
    Rejected("payment", "UNKNOWN_CUSTOMER", order_data(customer_id="mallory")),
    Rejected("payment", "CURRENCY_MISMATCH", order_data(total=eur(500, "USD"))),
    Rejected("shipping", "UNSERVICEABLE_DESTINATION", order_data(destination="Atlantis")),
    Rejected("shipping", "UNSERVICEABLE_DESTINATION", order_data(destination=" antarctica")),
]


@pytest.mark.parametrize("case", REJECTED, ids=[f"{c.service}: {c.reason}" for c in REJECTED])
async def test_business_rejection_is_final_carries_its_reason_and_changes_nothing(
    cluster: Cluster, case: Rejected
) -> None:
    probe = PROBES[case.service]
    request = step_request(probe.action, case.data)
    before = await full_state(cluster, case.service)

    first = await failure(execute(cluster, case.service, request))
    retried = await failure(execute(cluster, case.service, request))

    assert (first.code, first.reason) == (grpc.StatusCode.FAILED_PRECONDITION, case.reason)
    assert retried == first  # the recorded "no" is replayed, never re-decided
    assert await full_state(cluster, case.service) == before
    undo = await compensate(cluster, case.service, with_action(request, probe.compensation))
    assert undo.outcome == NULL_COMPENSATION
    assert await full_state(cluster, case.service) == before


@pytest.mark.parametrize("service", sorted(PROBES))
async def test_a_second_step_of_the_same_saga_is_refused_and_changes_nothing(
    cluster: Cluster, service: str
) -> None:
    """The barrier keys on (saga, step): the same action under another step name would give
    the saga a second order, reservation, charge or shipment. Refused, recorded, replayed."""
    probe = PROBES[service]
    first = step_request(probe.action, probe.payload())
    await execute(cluster, service, first)
    before = await full_state(cluster, service)
    second = step_request(probe.action, probe.payload(), saga_id=first.saga_id, step="again")

    refused = await failure(execute(cluster, service, second))
    retried = await failure(execute(cluster, service, second))

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REQUEST_MISMATCH",
    )
    assert "from another step" in refused.message
    assert retried == refused
    assert await full_state(cluster, service) == before
    # Undoing the refused step undoes nothing; the first step's effect is still there.
    undo = await compensate(cluster, service, with_action(second, probe.compensation))
    assert undo.outcome == NULL_COMPENSATION
    assert await full_state(cluster, service) == before
    assert await probe.rows(cluster, first.saga_id) == [probe.applied_status]


@pytest.mark.parametrize("service", sorted(PROBES))
async def test_a_bug_is_internal_error_and_leaks_nothing(cluster: Cluster, service: str) -> None:
    """An action that breaks (here: a store error it did not expect) answers INTERNAL with
    nothing internal in the status, and what it wrote is rolled back."""
    probe = PROBES[service]
    app = cluster.servers[service].app
    assert isinstance(app, DomainService)
    actions = app.runner.by_action

    def broken(conn: Connection, ctx: StepContext, payload: Message) -> Message:
        conn.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
        raise sqlite3.IntegrityError("UNIQUE constraint failed: secret.column (broken.py)")

    actions[probe.action] = dataclasses.replace(actions[probe.action], execute=broken)
    before = await full_state(cluster, service)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execute(cluster, service, step_request(probe.action, probe.payload()))

    error = caught.value
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert parse_rpc_error(error).reason == "INTERNAL"
    trailers = b"".join(
        value if isinstance(value, bytes) else value.encode()
        for _, value in error.trailing_metadata() or ()
    )
    for secret in (b"sqlite", b"UNIQUE", b"constraint", b"Traceback", b".py", b"secret"):
        assert secret not in trailers
    assert await full_state(cluster, service) == before


async def test_an_order_id_of_another_saga_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    data = order_data()
    await execute(cluster, "order", step_request("create_order", data))
    before = await full_state(cluster, "order")

    other_saga = step_request("create_order", data)  # a new saga id, the same order id
    refused = await failure(execute(cluster, "order", other_saga))

    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_EXISTS")
    assert await full_state(cluster, "order") == before
