"""The public gRPC API, ``sagawire.v1.Coordinator``: a thin edge over the engine and the log.

Requests are validated first (INVALID_ARGUMENT names the field) and nothing is
written for a bad one. Errors leave through the one table of common.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from common.breakers import BreakerBoard
from common.bulkhead import Bulkheads
from common.errors import BreakerOpen, NotFound, SagawireError, abort, grpc_edge
from common.telemetry import current_trace_id
from coordinator import requests
from coordinator.definitions import Definitions, SagaMode
from coordinator.engine import SagaEngine
from coordinator.observation import OBSERVED
from coordinator.payloads import saga_data
from coordinator.records import SETTLED, Kind, SagaRecord
from coordinator.store import SagaLog
from coordinator.views import SAGA_STATUS, breaker_message, failure_message, saga_message
from coordinator.views import transition_message as transition
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc

SERVICE_NAME = "sagawire.v1.Coordinator"


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        engine: SagaEngine,
        saga_log: SagaLog,
        definitions: Definitions,
        breakers: BreakerBoard,
        bulkheads: Bulkheads,
        watch_poll_seconds: float = 1.0,
        shed_at_door: bool = True,
    ) -> None:
        self._engine = engine
        self._log = saga_log
        self._definitions = definitions
        self._breakers = breakers
        self._bulkheads = bulkheads
        self._shed_at_door = shed_at_door
        self._poll = watch_poll_seconds

    def _message(self, record: SagaRecord) -> pb.Saga:
        return saga_message(self._definitions.get(record.definition), record)

    async def _load(self, saga_id: str) -> SagaRecord:
        record = await self._log.load(saga_id)
        if record is None:
            raise NotFound(f"no saga {saga_id}")
        return record

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlaceOrderResponse:
        async def body() -> pb.PlaceOrderResponse:
            data, fingerprint = requests.place_order(request)
            self._refuse_if_first_participant_down(request.saga or requests.DEFAULT_SAGA)
            record, created = await self._engine.start(
                request.saga or requests.DEFAULT_SAGA,
                data,
                idempotency_key=request.idempotency_key,
                request_hash=fingerprint,
                # This call's trace: the saga's spans join it, GetSaga returns its id.
                trace_id=current_trace_id(),
            )
            if request.wait and record.status not in SETTLED:
                record = await self._engine.wait_settled(record.saga_id)
            definition = self._definitions.get(record.definition)
            logged = saga_data(definition, record) if definition is not None else data
            return pb.PlaceOrderResponse(
                saga_id=record.saga_id,
                order_id=getattr(logged, "order_id", ""),
                status=SAGA_STATUS[record.status],
                failure=failure_message(record.failure),
                existing=not created,
            )

        return await grpc_edge(context, body)

    def _refuse_if_first_participant_down(self, saga: str) -> None:
        """Load shedding at the door: while the breaker of a participant the saga calls
        first is open, a new saga would only wait, so it is refused (UNAVAILABLE) before
        anything is written; a client retrying with the same idempotency key gets it
        once, later."""
        definition = self._definitions.get(saga)
        if not self._shed_at_door or definition is None:
            return
        for step in definition.roots:
            if self._breakers.is_open(step.participant):
                raise BreakerOpen(
                    f"{step.participant} is unavailable (circuit breaker open); retry later"
                )

    async def GetSaga(
        self, request: pb.GetSagaRequest, context: grpc.aio.ServicerContext
    ) -> pb.Saga:
        async def body() -> pb.Saga:
            record = await self._load(requests.saga_id(request.saga_id))
            message = self._message(record)
            if record.mode == SagaMode.CHOREOGRAPHY.value:
                observed = await self._log.history(record.saga_id)
                for step in message.steps:
                    step.events.extend(
                        t.detail.removeprefix(OBSERVED)
                        for t in observed
                        if t.step == step.name
                        and t.detail.startswith(OBSERVED)
                        and t.kind
                        in (Kind.STEP_SUCCEEDED, Kind.STEP_REJECTED, Kind.COMPENSATION_DONE)
                    )
            return message

        return await grpc_edge(context, body)

    async def ListSagas(
        self, request: pb.ListSagasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSagasResponse:
        async def body() -> pb.ListSagasResponse:
            status = requests.status_filter(request.status)
            size = requests.page_size(request.page_size)
            before = requests.decode_cursor(request.page_token)
            found = await self._log.list_sagas(status, before, size + 1)
            page, more = found[:size], len(found) > size
            token = ""
            if more:
                token = requests.encode_cursor((page[-1].created_at, page[-1].saga_id))
            return pb.ListSagasResponse(
                sagas=[self._message(r) for r in page], next_page_token=token
            )

        return await grpc_edge(context, body)

    async def WatchSaga(
        self, request: pb.WatchSagaRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SagaTransition]:
        try:
            saga_id = requests.saga_id(request.saga_id)
            await self._load(saga_id)
        except SagawireError as error:
            await abort(context, error)
        seen = 0
        with self._log.listen(saga_id) as listener:
            while True:
                listener.changed.clear()
                batch = await self._log.history(saga_id, seen)
                for t in batch:
                    yield transition(t)
                    seen = t.seq
                if (batch and batch[-1].status in SETTLED) or listener.woken:
                    return
                # The poll is a safety net for changes made by another process.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await listener.changed.wait()

    async def RetrySaga(
        self, request: pb.RetrySagaRequest, context: grpc.aio.ServicerContext
    ) -> pb.Saga:
        async def body() -> pb.Saga:
            return self._message(await self._engine.retry(requests.saga_id(request.saga_id)))

        return await grpc_edge(context, body)

    async def ListBreakers(
        self, request: pb.ListBreakersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBreakersResponse:
        return pb.ListBreakersResponse(
            breakers=[
                breaker_message(v, self._bulkheads.view(v.participant))
                for v in self._breakers.views()
            ]
        )


def register(server: grpc.aio.Server, servicer: CoordinatorServicer) -> None:
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
