"""Bearer tokens at the coordinator's public API, against a real stack: who may call
what, and whose sagas a customer sees (coordinator/api/auth.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.grpc_errors import RemoteError, parse_rpc_error
from common.tokens import Role, TokenSettings, ensure_signing_key
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc
from tests.coordinator_support import Stack, api_token, line, running_stack, write_definitions


def customer(name: str) -> str:
    return api_token(Role.CUSTOMER, name)


def order(customer: str, wait: bool = True) -> pb.PlaceOrderRequest:
    return pb.PlaceOrderRequest(
        customer_id=customer, items=[line("SKU-MUG", 1)], destination="Berlin", wait=wait
    )


async def refused(call: Awaitable[Any]) -> RemoteError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return parse_rpc_error(error)
    raise AssertionError("the call succeeded but was expected to be refused")


async def watched(api: coordinator_pb2_grpc.CoordinatorStub, saga_id: str) -> list[str]:
    return [t.kind async for t in api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id))]


def every_method(
    api: coordinator_pb2_grpc.CoordinatorStub, saga_id: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "PlaceOrder": lambda: api.PlaceOrder(order("alice")),
        "ReturnOrder": lambda: api.ReturnOrder(
            pb.ReturnOrderRequest(order_id="order-1", customer_id="alice")
        ),
        "GetSaga": lambda: api.GetSaga(pb.GetSagaRequest(saga_id=saga_id)),
        "ListSagas": lambda: api.ListSagas(pb.ListSagasRequest()),
        "WatchSaga": lambda: watched(api, saga_id),
        "RetrySaga": lambda: api.RetrySaga(pb.RetrySagaRequest(saga_id=saga_id)),
        "ListBreakers": lambda: api.ListBreakers(pb.ListBreakersRequest()),
        "CountSagas": lambda: api.CountSagas(pb.CountSagasRequest()),
        "ListDefinitions": lambda: api.ListDefinitions(pb.ListDefinitionsRequest()),
    }


async def sagas_of(stack: Stack) -> list[str]:
    listed = await stack.api.ListSagas(pb.ListSagasRequest(page_size=500))
    return [s.saga_id for s in listed.sagas]


def _token(key: Any, algorithm: str = "EdDSA", **claims: Any) -> str:
    base = {
        "iss": "sagawire-local",
        "aud": "sagawire",
        "sub": "alice",
        "role": "customer",
        "exp": int(time.time()) + 60,
    }
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


async def test_no_token_or_a_bad_one_is_unauthenticated_on_every_method(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        placed = await stack.api.PlaceOrder(order("alice"))
        stranger = Ed25519PrivateKey.generate()
        bad = {
            "none": None,
            "garbage": "not.a.token",
            "another key": _token(stranger),
            "expired": api_token_expired(),
        }
        for what, token in bad.items():
            for method, call in every_method(stack.api_as(token), placed.saga_id).items():
                error = await refused(call())
                assert error.code == grpc.StatusCode.UNAUTHENTICATED, (what, method)
        # Nothing was placed by any of them.
        assert await sagas_of(stack) == [placed.saga_id]


def api_token_expired() -> str:
    key = ensure_signing_key(TokenSettings().key_path)
    return _token(key, exp=int(time.time()) - 3600)


async def test_a_customer_places_orders_only_as_itself(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        error = await refused(stack.api_as(customer("alice")).PlaceOrder(order("bob")))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert await sagas_of(stack) == []  # refused before anything was written

        own = await stack.api_as(customer("alice")).PlaceOrder(order("alice"))
        assert own.status == pb.SAGA_STATUS_COMPLETED
        # An operator places for anyone.
        for_bob = await stack.api.PlaceOrder(order("bob"))
        assert for_bob.status == pb.SAGA_STATUS_COMPLETED


async def test_a_customer_reads_only_its_own_sagas(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        alice, bob = stack.api_as(customer("alice")), stack.api_as(customer("bob"))
        alices = [(await alice.PlaceOrder(order("alice"))).saga_id for _ in range(3)]
        bobs = [(await bob.PlaceOrder(order("bob"))).saga_id for _ in range(2)]

        seen = await alice.GetSaga(pb.GetSagaRequest(saga_id=alices[0]))
        assert seen.saga_id == alices[0]
        assert (await watched(alice, alices[0]))[-1] == "saga_completed"

        # Another's saga is as absent as one that does not exist: NOT_FOUND, same words.
        for call in (
            bob.GetSaga(pb.GetSagaRequest(saga_id=alices[0])),
            watched(bob, alices[0]),
        ):
            error = await refused(call)
            assert (error.code, error.message) == (
                grpc.StatusCode.NOT_FOUND,
                f"no saga {alices[0]}",
            )

        # Lists are filtered, and page through only the caller's sagas.
        first = await alice.ListSagas(pb.ListSagasRequest(page_size=2))
        rest = await alice.ListSagas(
            pb.ListSagasRequest(page_size=2, page_token=first.next_page_token)
        )
        listed = [s.saga_id for s in [*first.sagas, *rest.sagas]]
        assert listed == list(reversed(alices))  # newest first
        assert not rest.next_page_token
        assert [s.saga_id for s in (await bob.ListSagas(pb.ListSagasRequest())).sagas] == list(
            reversed(bobs)
        )
        assert sorted(await sagas_of(stack)) == sorted(alices + bobs)  # the operator: all


async def test_only_an_operator_retries_sagas_and_reads_breakers(tmp_path: Path) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        compensation_retry={"max_attempts": 2, "initial_backoff": "10ms", "max_backoff": "10ms"},
    )
    async with running_stack(tmp_path, definitions=definitions) as stack:
        await stack.faults("payment", refund=(-1, 0))
        stuck = await stack.api_as(customer("alice")).PlaceOrder(
            pb.PlaceOrderRequest(
                customer_id="alice", items=[line("SKU-LAMP", 1)], destination="Atlantis", wait=True
            )
        )
        assert stuck.status == pb.SAGA_STATUS_NEEDS_ATTENTION
        await stack.faults("payment")

        alice = stack.api_as(customer("alice"))
        for call in (
            alice.RetrySaga(pb.RetrySagaRequest(saga_id=stuck.saga_id)),
            alice.ListBreakers(pb.ListBreakersRequest()),
            alice.CountSagas(pb.CountSagasRequest()),
        ):
            assert (await refused(call)).code == grpc.StatusCode.PERMISSION_DENIED
        assert (await stack.saga(stuck.saga_id)).status == pb.SAGA_STATUS_NEEDS_ATTENTION

        breakers = await stack.api.ListBreakers(pb.ListBreakersRequest())
        assert {b.participant for b in breakers.breakers} >= {"payment"}
        retried = await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=stuck.saga_id))
        assert retried.status == pb.SAGA_STATUS_COMPENSATING
        assert (await stack.settled(stuck.saga_id)).status == pb.SAGA_STATUS_COMPENSATED


async def test_a_token_with_no_sagawire_role_is_permission_denied(tmp_path: Path) -> None:
    key = ensure_signing_key(TokenSettings().key_path)
    async with running_stack(tmp_path) as stack:
        error = await refused(stack.api_as(_token(key, role="auditor")).PlaceOrder(order("alice")))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED


async def test_with_auth_off_by_name_every_caller_is_an_operator(tmp_path: Path) -> None:
    async with running_stack(tmp_path, auth=False) as stack:
        anyone = stack.api_as(None)
        placed = await anyone.PlaceOrder(order("bob"))
        assert placed.status == pb.SAGA_STATUS_COMPLETED
        await anyone.ListBreakers(pb.ListBreakersRequest())
        listed = await anyone.ListSagas(pb.ListSagasRequest())
        assert [s.saga_id for s in listed.sagas] == [placed.saga_id]


async def test_concurrent_customers_are_told_apart(tmp_path: Path) -> None:
    """The verifier remembers tokens: many callers at once each stay themselves."""
    async with running_stack(tmp_path) as stack:
        customers = ["alice", "bob", "carol", "dave"]
        tokens = {c: api_token(Role.CUSTOMER, c) for c in customers}
        placed = await asyncio.gather(
            *(stack.api_as(tokens[c]).PlaceOrder(order(c, wait=False)) for c in customers * 3)
        )
        for customer in customers:
            listed = await stack.api_as(tokens[customer]).ListSagas(pb.ListSagasRequest())
            mine = {p.saga_id for p, c in zip(placed, customers * 3, strict=True) if c == customer}
            assert {s.saga_id for s in listed.sagas} == mine
