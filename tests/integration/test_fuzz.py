"""Mutated requests against the real services and coordinator: always a clean status.

Valid requests of every public method (the services' Participant, read and EventStream
APIs; the coordinator's API) are serialized and mutated as bytes (bits flipped, bytes
replaced, inserted, cut, fields appended with edge values such as 2^32 + 1), and a
Participant request's ``Any`` payload is mutated inside an otherwise valid request.
Every reply must be one of :data:`CLEAN`, never UNKNOWN or INTERNAL; no log line may
carry a traceback; afterwards every store passes ``PRAGMA integrity_check`` and stock and
money are conserved. A fixed seed makes a failure reproducible.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from common.certs import COORDINATOR, OPERATOR
from common.config import SEED_FILE, SERVICE_NAMES
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    events_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import Stack, api_token, running_stack
from tests.integration.steps import PROBES
from tests.support import open_channel

CLEAN = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
SEED = tomllib.loads(SEED_FILE.read_text())
# Values a mutation writes into a field: what wraps, overflows or is simply absurd.
EDGE_INTEGERS = (0, 1, 2**31 - 1, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**64 - 1, -1)
# The filters of ListSagas and CountSagas, every field set (a time out of range is
# INVALID_ARGUMENT).
FILTER = pb.SagaFilter(
    saga="place_order",
    mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
    created_after=timestamp_pb2.Timestamp(seconds=1_700_000_000),
    created_before=timestamp_pb2.Timestamp(seconds=1_900_000_000, nanos=5),
)


@dataclass(frozen=True)
class Target:
    """One method of one process, called as ``identity`` with seeds of valid requests."""

    process: str
    method: str
    identity: str
    seeds: Sequence[Message]
    streaming: bool = False
    # For Participant calls: mutate the payload inside an otherwise valid request too.
    payload_inside: bool = False


def _targets() -> list[Target]:
    targets: list[Target] = []
    for name, probe in PROBES.items():
        step = participant_pb2.StepRequest(
            saga_id="saga-fuzz",
            step=f"{probe.action}_step",
            action=probe.action,
            payload=pack(probe.payload()),
            mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
        )
        undo = participant_pb2.StepRequest()
        undo.CopyFrom(step)
        undo.action = probe.compensation
        for method, seed in (("Execute", step), ("Compensate", undo)):
            targets.append(
                Target(
                    name,
                    f"/sagawire.v1.Participant/{method}",
                    COORDINATOR,
                    [seed],
                    payload_inside=True,
                )
            )
        subscribe = events_pb2.SubscribeRequest(
            from_sequence=1, consumer="fuzz", types=["sagawire.order.created"]
        )
        targets.append(
            Target(name, "/sagawire.v1.EventStream/Subscribe", COORDINATOR, [subscribe], True)
        )
        targets.append(
            Target(
                name,
                "/sagawire.v1.EventStream/ListPoisonEvents",
                OPERATOR,
                [events_pb2.ListPoisonEventsRequest()],
            )
        )
    reads: list[tuple[str, str, list[Message]]] = [
        ("order", "GetOrder", [order_pb2.GetOrderRequest(order_id="order-1")]),
        ("order", "ListOrders", [order_pb2.ListOrdersRequest(page_size=10, page_token="x")]),
        ("inventory", "GetStock", [inventory_pb2.GetStockRequest(sku="SKU-MUG")]),
        ("inventory", "ListStock", [inventory_pb2.ListStockRequest()]),
        ("inventory", "GetReservation", [inventory_pb2.GetReservationRequest(saga_id="s")]),
        ("payment", "GetAccount", [payment_pb2.GetAccountRequest(customer_id="alice")]),
        ("payment", "ListAccounts", [payment_pb2.ListAccountsRequest()]),
        ("payment", "ListCharges", [payment_pb2.ListChargesRequest(customer_id="alice")]),
        ("shipping", "GetShipment", [shipping_pb2.GetShipmentRequest(shipment_id="x")]),
        ("shipping", "GetShipmentBySaga", [shipping_pb2.GetShipmentBySagaRequest(saga_id="s")]),
        ("shipping", "ListShipments", [shipping_pb2.ListShipmentsRequest()]),
    ]
    for name, method, seeds in reads:
        service = f"sagawire.v1.{name.capitalize()}"
        targets.append(Target(name, f"/{service}/{method}", OPERATOR, seeds))
    place = pb.PlaceOrderRequest(
        customer_id="alice",
        items=[common_pb2.LineItem(sku="SKU-MUG", quantity=1)],
        destination="Berlin",
        idempotency_key="fuzz",
    )
    saga_id = "00000000-0000-4000-8000-000000000000"
    api: list[tuple[str, Message, bool]] = [
        ("PlaceOrder", place, False),
        ("ReturnOrder", pb.ReturnOrderRequest(order_id="o-1", customer_id="alice"), False),
        ("GetSaga", pb.GetSagaRequest(saga_id=saga_id), False),
        ("ListSagas", pb.ListSagasRequest(page_size=5, status=pb.SAGA_STATUS_COMPLETED), False),
        ("ListSagas", pb.ListSagasRequest(filter=FILTER), False),
        ("WatchSaga", pb.WatchSagaRequest(saga_id=saga_id), True),
        ("RetrySaga", pb.RetrySagaRequest(saga_id=saga_id), False),
        ("ListBreakers", pb.ListBreakersRequest(), False),
        ("CountSagas", pb.CountSagasRequest(filter=FILTER), False),
        ("ListDefinitions", pb.ListDefinitionsRequest(), False),
    ]
    for method, request, streaming in api:
        path = f"/sagawire.v1.Coordinator/{method}"
        targets.append(Target("coordinator", path, OPERATOR, [request], streaming))
    return targets


TARGETS = _targets()


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to three random mutations."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # replace a byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # cut a slice
            del buf[at : at + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del buf[at:]
        elif op == 5 and buf:  # repeat a slice
            buf[at:at] = buf[rng.randrange(len(buf)) :][: rng.randint(1, 16)]
        elif op == 6:  # append a varint field with an edge value
            field = rng.randint(1, 12)
            buf += _varint(field << 3) + _varint(rng.choice(EDGE_INTEGERS))
        else:  # append a length-delimited field: random, long, or lying about its length
            field = rng.randint(1, 12)
            body = rng.choice([rng.randbytes(rng.randint(0, 32)), b"\n" * 5_000, "é".encode()])
            length = len(body) + rng.choice([0, 0, 0, 3, -1])
            buf += _varint(field << 3 | 2) + _varint(max(length, 0)) + body
    return bytes(buf)


def request_bytes(rng: random.Random, target: Target) -> bytes:
    seed = rng.choice(target.seeds)
    if rng.random() < 0.1:
        return seed.SerializeToString()
    if target.payload_inside and rng.random() < 0.4:
        inside = participant_pb2.StepRequest.FromString(seed.SerializeToString())
        inside.payload.value = mutate(rng, inside.payload.value)
        return inside.SerializeToString()
    if rng.random() < 0.03:
        return rng.randbytes(rng.randint(1, 64))
    return mutate(rng, seed.SerializeToString())


class Caller:
    """Raw-bytes calls to the stack's processes, as each target's identity."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._token = (("authorization", f"Bearer {api_token()}"),)

    def _channel(self, process: str, identity: str) -> grpc.aio.Channel:
        key = (process, identity)
        if key not in self._channels:
            address = (
                self._stack.address
                if process == "coordinator"
                else self._stack.cluster.address(process)
            )
            self._channels[key] = open_channel(address, identity, peer=process)
        return self._channels[key]

    async def call(self, target: Target, body: bytes) -> grpc.StatusCode:
        channel = self._channel(target.process, target.identity)
        metadata = self._token if target.process == "coordinator" else None
        try:
            if target.streaming:
                # A stream that is still open after a moment is a stream that was accepted.
                stream = channel.unary_stream(target.method)(body, metadata=metadata, timeout=0.3)
                async for _ in stream:
                    pass
            else:
                await channel.unary_unary(target.method)(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            code: grpc.StatusCode = error.code()
            if target.streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return grpc.StatusCode.OK
            return code
        return grpc.StatusCode.OK

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def check_stores(tmp_path: Path) -> None:
    """Every store is sound, and stock and money are conserved."""
    paths = [tmp_path / "services" / f"{name}.db" for name in SERVICE_NAMES]
    for path in [*paths, tmp_path / "coordinator" / "coordinator.db"]:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
    with sqlite3.connect(tmp_path / "services" / "inventory.db") as conn:
        for sku, total in SEED["inventory"]["stock"].items():
            available, reserved = conn.execute(
                "SELECT available, reserved FROM stock WHERE sku = ?", (sku,)
            ).fetchone()
            (held,) = conn.execute(
                "SELECT COALESCE(SUM(quantity), 0) FROM reservation"
                " WHERE sku = ? AND status = 'reserved'",
                (sku,),
            ).fetchone()
            assert (available + reserved, reserved) == (total, held), sku
    with sqlite3.connect(tmp_path / "services" / "payment.db") as conn:
        for customer, seeded in SEED["payment"]["accounts"].items():
            (balance,) = conn.execute(
                "SELECT balance_minor FROM account WHERE customer_id = ?", (customer,)
            ).fetchone()
            (captured,) = conn.execute(
                "SELECT COALESCE(SUM(amount_minor), 0) FROM charge"
                " WHERE customer_id = ? AND status = 'captured'",
                (customer,),
            ).fetchone()
            assert balance + captured == seeded, customer


def tracebacks(records: Sequence[logging.LogRecord]) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()[:200]}"
        for r in records
        if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR
    ]


async def fuzz(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, calls: int, seed: int
) -> Counter[str]:
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    unclean: list[str] = []
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    async with running_stack(tmp_path) as stack:
        caller = Caller(stack)
        try:
            for i in range(calls):
                target = TARGETS[i % len(TARGETS)]
                body = request_bytes(rng, target)
                code = await caller.call(target, body)
                outcomes[code.name] += 1
                if code not in CLEAN:
                    unclean.append(f"{target.method} {code.name} {body[:80]!r}")
            # The saga path still works after all that.
            saga = await stack.place(customer="bob", items=[("SKU-BOOK", 1)], to="Paris")
            assert saga.status == pb.SAGA_STATUS_COMPLETED, saga
        finally:
            await caller.close()
    elapsed = time.monotonic() - started
    assert unclean == [], f"{len(unclean)} unclean replies: {unclean[:10]}"
    assert tracebacks(caplog.records) == []
    # One line per method of each process per 10 s at most, however many arrived.
    undecodable = [r for r in caplog.records if "undecodable request" in r.getMessage()]
    assert len(undecodable) <= len(TARGETS) * (1 + int(elapsed // 10))
    check_stores(tmp_path)
    print(f"fuzz: {calls} calls in {elapsed:.1f}s: {dict(sorted(outcomes.items()))}")
    return outcomes


async def test_mutated_requests_get_a_clean_status_and_leave_sound_stores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = await fuzz(tmp_path, caplog, calls=400, seed=15)
    assert outcomes["INVALID_ARGUMENT"] > 100  # the mutations did reach the edge


@pytest.mark.slow
async def test_many_mutated_requests_get_a_clean_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await fuzz(tmp_path, caplog, calls=2_000, seed=1_500)
