"""Malformed requests, one kind at a time: the status each gets and what the log shows.

- bytes that are not the method's message: INVALID_ARGUMENT naming the message, one
  WARNING line (no traceback) however many arrive; a caller who may not call the method
  is told that first;
- an ``Any`` payload that does not decode: INVALID_ARGUMENT naming the field;
- a quantity of 2^32 + 1 on the wire (an int32 field read it as 1): refused;
- a consumer name too long, or one that would start a forged log line: refused, and
  the one accepted is logged escaped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from common.certs import COORDINATOR, OPERATOR
from common.grpc_errors import parse_rpc_error
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import events_pb2, events_pb2_grpc, participant_pb2
from tests.coordinator_support import api_token, running_stack
from tests.integration.steps import PROBES, failure, full_state, step_request
from tests.support import Cluster, open_channel

EXECUTE = "/sagawire.v1.Participant/Execute"
GARBAGE = b"\xff\xff\xff\xff"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field, as the wire carries it."""
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def line_item(sku: str, quantity: int) -> bytes:
    """A sagawire.v1.LineItem written by hand: any quantity, as a client could send it."""
    return _field(1, sku.encode()) + _varint(2 << 3) + _varint(quantity)


async def raw_call(
    cluster: Cluster, service: str, method: str, body: bytes, identity: str = COORDINATOR
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.channel(service, identity).unary_unary(method)(body, timeout=10)
    return caught.value


async def test_undecodable_bytes_are_invalid_argument_with_one_quiet_log_line(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(25):
        error = await raw_call(cluster, "inventory", EXECUTE, GARBAGE)
        remote = parse_rpc_error(error)
        assert (remote.code, remote.field) == (grpc.StatusCode.INVALID_ARGUMENT, "request")
        assert remote.message == "request: body is not a valid sagawire.v1.StepRequest"

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname) for r in warnings] == [("common.decoding", "WARNING")]
    assert not warnings[0].exc_info
    assert "method=/sagawire.v1.Participant/Execute" in warnings[0].getMessage()
    # Still a working service: a valid call on the same channel goes through.
    probe = PROBES["inventory"]
    reply = await cluster.participant("inventory").Execute(
        step_request(probe.action, probe.payload())
    )
    assert reply.outcome == participant_pb2.BARRIER_OUTCOME_APPLIED


async def test_a_caller_who_may_not_call_learns_that_first(cluster: Cluster) -> None:
    error = await raw_call(cluster, "inventory", EXECUTE, GARBAGE, identity=OPERATOR)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("service", sorted(PROBES))
async def test_a_payload_that_does_not_decode_names_the_field(
    cluster: Cluster, service: str
) -> None:
    probe = PROBES[service]
    request = step_request(probe.action, probe.payload())
    request.payload.value = GARBAGE  # the type_url is right; the bytes are not
    before = await full_state(cluster, service)

    refused = await failure(cluster.participant(service).Execute(request))

    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, "payload")
    assert refused.message == "payload: is not a valid sagawire.v1.OrderSagaData"
    assert await full_state(cluster, service) == before


async def test_a_quantity_beyond_32_bits_is_refused_not_wrapped(cluster: Cluster) -> None:
    """2^32 + 1 in an int32 field decodes as 1; the field is int64 now, and 1..10,000."""
    request = step_request("reserve", PROBES["inventory"].payload())
    data = _field(1, b"order-1") + _field(3, line_item("SKU-BOOK", 2**32 + 1))
    request.payload.value = data
    before = await full_state(cluster, "inventory")

    refused = await failure(cluster.participant("inventory").Execute(request))

    assert (refused.code, refused.field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload.items[0].quantity",
    )
    assert await full_state(cluster, "inventory") == before


async def test_place_order_refuses_a_quantity_beyond_32_bits(tmp_path: Path) -> None:
    body = (
        _field(1, b"alice")
        + _field(2, line_item("SKU-MUG", 2**32 + 1))
        + _field(3, b"Berlin")
        + _varint(5 << 3)
        + _varint(1)  # wait
    )
    token = (("authorization", f"Bearer {api_token()}"),)
    async with running_stack(tmp_path) as stack:
        async with open_channel(stack.address, OPERATOR, peer="coordinator") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/sagawire.v1.Coordinator/PlaceOrder")(
                    body, metadata=token, timeout=10
                )
        remote = parse_rpc_error(caught.value)
        assert (remote.code, remote.field) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].quantity",
        )
        listed = await stack.api.ListSagas(pb.ListSagasRequest())
        assert list(listed.sagas) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (events_pb2.SubscribeRequest(consumer="c" * 129), "consumer"),
        (events_pb2.SubscribeRequest(consumer="x\n2026 level=ERROR forged"), "consumer"),
        (events_pb2.SubscribeRequest(consumer="ok", types=["t" * 129]), "types[0]"),
        (events_pb2.SubscribeRequest(headers={f"k{i}": "v" for i in range(17)}), "headers"),
        (events_pb2.SubscribeRequest(headers={"k": "v" * 129}), "headers"),
    ],
    ids=["long consumer", "forged line", "long type", "many headers", "long header"],
)
async def test_subscribe_refuses_names_a_log_line_could_not_carry(
    cluster: Cluster, request_: events_pb2.SubscribeRequest, field: str
) -> None:
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("payment", COORDINATOR))
    stream = stub.Subscribe(request_, timeout=5)
    refused = await failure(stream.read())
    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_a_consumer_name_is_logged_escaped(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="common.stream")
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("payment", COORDINATOR))
    stream = stub.Subscribe(events_pb2.SubscribeRequest(consumer='say "hi" é'), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError):
        await stream.read()  # idle until the deadline
    joined = [r.getMessage() for r in caplog.records if "consumer='say" in r.getMessage()]
    assert joined == ["subscriber joined consumer='say \"hi\" é' from_sequence=1"]
