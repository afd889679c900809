"""What the benchmark places, and the drivers that place it in each mode.

A *mix* turns a saga's sequence number into a :class:`SagaSpec` (customer, items,
destination) and the outcome it must end with. A *driver* places one saga and
reports how it ended:

- :class:`RawDriver` — the floor: the bench itself calls the participants in the
  order and parallelism of ``place_order`` (create -> reserve || charge -> schedule
  -> approve; compensations in reverse), with no coordinator, log, retries,
  breakers or events consumed; pointed at :mod:`bench.bare_server`'s participants
  that do nothing, the same driver measures ``bare``, the floor under the floor;
- :class:`CoordinatorDriver` — ``PlaceOrder`` with ``wait`` on a coordinator, in
  whichever mode that coordinator (or the named definition) runs sagas;
- :class:`DirectChoreographyDriver` — choreography *without* the coordinator: it
  starts the flow with a choreographed ``create_order`` and learns the outcome from
  the order service's event stream. A diagnostic, labelled ``choreography-direct``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import grpc

from common.certs import COORDINATOR, OPERATOR
from common.grpc_errors import parse_rpc_error
from common.tls import Identity
from common.tokens import with_token
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    order_saga_pb2,
    participant_pb2,
    participant_pb2_grpc,
)
from services import saga_events

Data = order_saga_pb2.OrderSagaData

COMPLETED = "COMPLETED"
COMPENSATED = "COMPENSATED"
# The step that says no in the ``compensate`` mix: payment, after stock was reserved.
REJECTING_STEP = "charge_payment"


class Mix(StrEnum):
    """Which outcomes the placed sagas must end with."""

    happy = "happy"
    compensate = "compensate"
    mixed = "mixed"


@dataclass(frozen=True)
class SagaSpec:
    """One order to place and the saga status it must end with."""

    customer: str
    items: tuple[tuple[str, int], ...]
    destination: str
    expect: str


_HAPPY_CUSTOMERS = ("alice", "dave")
_HAPPY_SKUS = ("SKU-BOOK", "SKU-MUG", "SKU-LAMP")
# carol's balance (1,000 cents) is below two mugs (1,600): payment always declines,
# after inventory has reserved the stock, so the saga compensates.
_DECLINED = SagaSpec("carol", (("SKU-MUG", 2),), "Berlin", COMPENSATED)
# In the mixed workload one saga in this many compensates.
MIXED_COMPENSATE_EVERY = 4


def saga_spec(mix: Mix, number: int) -> SagaSpec:
    """The ``number``-th saga of a workload (deterministic, so reruns place the same orders)."""
    if mix is Mix.compensate or (
        mix is Mix.mixed and number % MIXED_COMPENSATE_EVERY == MIXED_COMPENSATE_EVERY - 1
    ):
        return _DECLINED
    customer = _HAPPY_CUSTOMERS[number % len(_HAPPY_CUSTOMERS)]
    sku = _HAPPY_SKUS[number % len(_HAPPY_SKUS)]
    return SagaSpec(customer, ((sku, 1),), "Berlin", COMPLETED)


@dataclass(frozen=True)
class SagaOutcome:
    """How one saga ended, as its driver saw it."""

    status: str
    order_id: str = ""
    saga_id: str = ""
    failed_step: str = ""
    reason: str = ""
    # The gRPC code of the failure, when it was not a business rejection.
    code: str = ""

    def matches(self, spec: SagaSpec) -> bool:
        if self.status != spec.expect:
            return False
        return spec.expect != COMPENSATED or self.failed_step == REJECTING_STEP

    def describe(self, spec: SagaSpec) -> str:
        """A short label for an unexpected outcome, for counting by kind."""
        got = self.status
        if self.failed_step or self.reason or self.code:
            why = self.reason or self.code or "-"
            got += f" at {self.failed_step or '?'} ({why})"
        return f"expected {spec.expect}, got {got}"


def _error_outcome(error: grpc.RpcError, **ids: str) -> SagaOutcome:
    remote = parse_rpc_error(error)
    return SagaOutcome(f"ERROR {remote.code.name}", reason=remote.reason or remote.message, **ids)


def saga_data(spec: SagaSpec, order_id: str = "") -> Data:
    return Data(
        order_id=order_id,
        customer_id=spec.customer,
        destination=spec.destination,
        items=[common_pb2.LineItem(sku=sku, quantity=qty) for sku, qty in spec.items],
    )


class Driver(Protocol):
    """Places one saga and waits for its outcome."""

    label: str

    async def place(self, spec: SagaSpec, key: str) -> SagaOutcome: ...

    async def close(self) -> None: ...


def _channel(address: str, identity: str = OPERATOR, peer: str | None = None) -> grpc.aio.Channel:
    return Identity.from_env(identity).aio_channel(
        address, peer=peer, options=[("grpc.max_receive_message_length", 4 << 20)]
    )


# --- raw: the participant chain, called by the bench itself --------------------------


class _Rejected(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(step, reason)
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class _Step:
    name: str
    participant: str
    action: str
    compensation: str | None


_CREATE = _Step("create_order", "order", "create_order", "cancel_order")
_RESERVE = _Step("reserve_stock", "inventory", "reserve", "release")
_CHARGE = _Step("charge_payment", "payment", "charge", "refund")
_SCHEDULE = _Step("schedule_shipment", "shipping", "schedule", "cancel")
_APPROVE = _Step("approve_order", "order", "approve_order", None)


class RawDriver:
    """The floor: ``place_order``'s participant calls made directly, nothing else.

    Same steps, same parallel group, same compensation order as the definition; a
    business rejection compensates the steps that succeeded, in reverse. Any other
    error ends the saga as ``ERROR <code>`` — there are no retries to hide it.
    """

    def __init__(
        self, addresses: Mapping[str, str], rpc_timeout: float = 30.0, label: str = "raw"
    ) -> None:
        # "bare" when the addresses are bench.bare_server's do-nothing participants.
        self.label = label
        names = {s.participant for s in (_CREATE, _RESERVE, _CHARGE, _SCHEDULE)}
        # The bench stands in for the coordinator: only its certificate may call Execute.
        self._channels = {name: _channel(addresses[name], COORDINATOR, peer=name) for name in names}
        self._stubs = {
            name: participant_pb2_grpc.ParticipantStub(ch) for name, ch in self._channels.items()
        }
        self._timeout = rpc_timeout

    async def _call(self, step: _Step, saga_id: str, data: Data, compensate: bool = False) -> Data:
        stub = self._stubs[step.participant]
        request = participant_pb2.StepRequest(
            saga_id=saga_id,
            step=step.name,
            action=(step.compensation or "") if compensate else step.action,
            payload=pack(data),
            mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
        )
        rpc = stub.Compensate if compensate else stub.Execute
        try:
            reply: participant_pb2.StepReply = await rpc(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise _Rejected(step.name, parse_rpc_error(error).reason) from None
            raise
        result = Data()
        reply.result.Unpack(result)
        return result

    async def _compensate(
        self, saga_id: str, data: Data, done: list[_Step], rejected: _Rejected
    ) -> SagaOutcome:
        data.cancel_reason = f"{rejected.step}: {rejected.reason}"
        parallel = [s for s in done if s in (_RESERVE, _CHARGE, _SCHEDULE)]
        # Reverse dependency order: schedule, then the reserve || charge group, then create.
        if _SCHEDULE in parallel:
            await self._call(_SCHEDULE, saga_id, data, compensate=True)
        group = [s for s in parallel if s is not _SCHEDULE]
        await asyncio.gather(*(self._call(s, saga_id, data, compensate=True) for s in group))
        await self._call(_CREATE, saga_id, data, compensate=True)
        return SagaOutcome(COMPENSATED, data.order_id, saga_id, rejected.step, rejected.reason)

    async def place(self, spec: SagaSpec, key: str) -> SagaOutcome:
        saga_id = key
        data = saga_data(spec, order_id=str(uuid.uuid4()))
        ids = {"order_id": data.order_id, "saga_id": saga_id}
        done: list[_Step] = []
        try:
            try:
                data.MergeFrom(await self._call(_CREATE, saga_id, data))
            except _Rejected as rejected:
                return SagaOutcome(
                    COMPENSATED, failed_step=rejected.step, reason=rejected.reason, **ids
                )
            done.append(_CREATE)
            results = await asyncio.gather(
                self._call(_RESERVE, saga_id, data),
                self._call(_CHARGE, saga_id, data),
                return_exceptions=True,
            )
            rejection: _Rejected | None = None
            for step, result in zip((_RESERVE, _CHARGE), results, strict=True):
                if isinstance(result, _Rejected):
                    rejection = rejection or result
                elif isinstance(result, BaseException):
                    raise result
                else:
                    done.append(step)
                    data.MergeFrom(result)
            if rejection is not None:
                return await self._compensate(saga_id, data, done, rejection)
            try:
                data.MergeFrom(await self._call(_SCHEDULE, saga_id, data))
            except _Rejected as rejected:
                return await self._compensate(saga_id, data, done, rejected)
            await self._call(_APPROVE, saga_id, data)
            return SagaOutcome(COMPLETED, **ids)
        except _Rejected as rejected:  # a compensation said no: a bug in a service
            return SagaOutcome("COMPENSATION REJECTED", failed_step=rejected.step, **ids)
        except grpc.aio.AioRpcError as error:
            return _error_outcome(error, **ids)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


# --- through the coordinator ----------------------------------------------------------


class CoordinatorDriver:
    """``PlaceOrder`` with ``wait``: the coordinator runs the saga and answers its outcome."""

    def __init__(
        self,
        label: str,
        address: str | Sequence[str],
        *,
        token: str | None,
        saga: str = "",
        rpc_timeout: float = 60.0,
    ) -> None:
        self.label = label
        # Several coordinator replicas: each call goes to the next one in turn.
        addresses = [address] if isinstance(address, str) else list(address)
        self._channels = [_channel(a) for a in addresses]
        self._stubs = [
            with_token(coordinator_pb2_grpc.CoordinatorStub(c), token) for c in self._channels
        ]
        self._turn = itertools.cycle(self._stubs)
        self._saga = saga
        self._timeout = rpc_timeout

    async def place(self, spec: SagaSpec, key: str) -> SagaOutcome:
        request = coordinator_pb2.PlaceOrderRequest(
            customer_id=spec.customer,
            items=[common_pb2.LineItem(sku=sku, quantity=qty) for sku, qty in spec.items],
            destination=spec.destination,
            idempotency_key=key,
            wait=True,
            saga=self._saga,
        )
        try:
            reply: coordinator_pb2.PlaceOrderResponse = await next(self._turn).PlaceOrder(
                request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            return _error_outcome(error)
        return SagaOutcome(
            status_name(reply.status),
            order_id=reply.order_id,
            saga_id=reply.saga_id,
            failed_step=reply.failure.step,
            reason=reply.failure.reason,
            code=reply.failure.code,
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def status_name(status: int) -> str:
    """``SAGA_STATUS_COMPLETED`` -> ``COMPLETED``."""
    return coordinator_pb2.SagaStatus.Name(status).removeprefix("SAGA_STATUS_")  # type: ignore[arg-type]


# --- choreography without the coordinator ---------------------------------------------

_ORDER_OUTCOMES = {
    saga_events.ORDER_APPROVED: COMPLETED,
    saga_events.ORDER_CANCELLED: COMPENSATED,
    saga_events.ORDER_REJECTED: COMPENSATED,
}


class DirectChoreographyDriver:
    """Starts the choreography with ``create_order`` and waits for the order's last event.

    One subscription to the order service's stream (from its first event, filtered to
    the outcome events) resolves the waiting sagas by subject. Not the product's path:
    it measures the services' choreography alone, with no observer and no saga log.
    """

    label = "choreography-direct"

    def __init__(self, addresses: Mapping[str, str], rpc_timeout: float = 60.0) -> None:
        # Stands in for the coordinator (create_order is the coordinator's call).
        self._order = _channel(addresses["order"], COORDINATOR, peer="order")
        self._participant = participant_pb2_grpc.ParticipantStub(self._order)
        self._events = events_pb2_grpc.EventStreamStub(self._order)
        self._timeout = rpc_timeout
        self._waiting: dict[str, asyncio.Future[events_pb2.Event]] = {}
        self._follow: asyncio.Task[None] | None = None

    async def _follow_outcomes(self) -> None:
        request = events_pb2.SubscribeRequest(
            from_sequence=1, consumer="bench", types=list(_ORDER_OUTCOMES)
        )
        stream = self._events.Subscribe(request)
        async for batch in stream:
            for event in batch.events:
                waiter = self._waiting.pop(event.subject, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)

    async def place(self, spec: SagaSpec, key: str) -> SagaOutcome:
        if self._follow is None:
            self._follow = asyncio.create_task(self._follow_outcomes(), name="bench-follow")
        saga_id = key
        data = saga_data(spec, order_id=str(uuid.uuid4()))
        ids = {"order_id": data.order_id, "saga_id": saga_id}
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[saga_id] = waiter
        request = participant_pb2.StepRequest(
            saga_id=saga_id,
            step="create_order",
            action="create_order",
            payload=pack(data),
            mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
        )
        try:
            await self._participant.Execute(request, timeout=self._timeout)
            event = await asyncio.wait_for(waiter, self._timeout)
        except grpc.aio.AioRpcError as error:
            self._waiting.pop(saga_id, None)
            return _error_outcome(error, **ids)
        except TimeoutError:
            self._waiting.pop(saga_id, None)
            return SagaOutcome("TIMEOUT", **ids)
        payload = events_pb2.OrderSagaEvent()
        event.data.Unpack(payload)
        reason = payload.data.cancel_reason
        failed_step, _, why = reason.partition(": ")
        return SagaOutcome(_ORDER_OUTCOMES[event.type], failed_step=failed_step, reason=why, **ids)

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._follow
        await self._order.close()
