"""The public gRPC API, ``sagawire.v1.Coordinator``: a thin edge over the engine and the log.

Every call first names its caller from its bearer token (coordinator/api/auth.py: who may
call what, and whose sagas a customer sees). Requests are validated next
(INVALID_ARGUMENT names the field) and nothing is written for a bad one. Errors leave
through the one table of common.grpc_errors (its interceptor, on every server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from google.protobuf.message import Message

from common.breakers import BreakerBoard
from common.bulkhead import Bulkheads
from common.errors import BreakerOpen, NotFound, PermissionDenied, Transient
from common.tokens import Caller
from contract.definitions import Definitions, SagaMode
from coordinator.api import requests
from coordinator.api.auth import ApiAuth, may_see
from coordinator.api.views import (
    SAGA_STATUS,
    breaker_message,
    counts_message,
    definition_message,
    failure_message,
    saga_message,
)
from coordinator.api.views import transition_message as transition
from coordinator.choreography.observation import OBSERVED
from coordinator.engine.payloads import saga_data
from coordinator.engine.scheduler import SagaEngine
from coordinator.engine.telemetry import link_to_saga, saga_trace_id
from coordinator.log.records import SETTLED, Kind, SagaRecord, SagaStatus
from coordinator.log.saga_log import Cursor, IdempotencyConflict, SagaFilter, SagaLog
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "sagawire.v1.Coordinator"

# A customer's ListSagas reads the log in batches of this many sagas, and at most
# _MAX_SCANNED per call: its page may come back short, with a token to read on.
_SCAN_BATCH = 200
_MAX_SCANNED = 5_000


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        engine: SagaEngine,
        saga_log: SagaLog,
        definitions: Definitions,
        breakers: BreakerBoard,
        bulkheads: Bulkheads,
        auth: ApiAuth,
        watch_poll_seconds: float = 1.0,
        shed_at_door: bool = True,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        self._engine = engine
        self._log = saga_log
        self._definitions = definitions
        self._breakers = breakers
        self._bulkheads = bulkheads
        self._auth = auth
        self._shed_at_door = shed_at_door
        self._poll = watch_poll_seconds
        # Where each participant is called (ListBreakers tells the CLI).
        self._addresses = dict(addresses or {})

    def _message(self, record: SagaRecord) -> pb.Saga:
        return saga_message(self._definitions.get(record.definition), record)

    async def _load(self, saga_id: str, caller: Caller) -> SagaRecord:
        """The saga, if it exists and ``caller`` may see it; the same NOT_FOUND otherwise."""
        record = await self._log.load(saga_id)
        if record is None or not may_see(caller, self._definitions, record):
            raise NotFound(f"no saga {saga_id}")
        return record

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlaceOrderResponse:
        caller = await self._auth.caller(context, "PlaceOrder")
        data, fingerprint = requests.place_order(request)
        if not caller.acts_for(request.customer_id):
            raise PermissionDenied(
                f"a customer token for {caller.subject!r} places orders only as"
                f" {caller.subject!r}, not {request.customer_id!r}"
            )
        saga = request.saga or requests.DEFAULT_SAGA
        record, created, logged = await self._start(
            saga, data, request.idempotency_key, fingerprint, request.wait
        )
        return pb.PlaceOrderResponse(
            saga_id=record.saga_id,
            order_id=getattr(logged, "order_id", ""),
            status=SAGA_STATUS[record.status],
            failure=failure_message(record.failure),
            existing=not created,
        )

    async def ReturnOrder(
        self, request: pb.ReturnOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReturnOrderResponse:
        caller = await self._auth.caller(context, "ReturnOrder")
        data, fingerprint = requests.return_order(request)
        if not caller.acts_for(request.customer_id):
            raise PermissionDenied(
                f"a customer token for {caller.subject!r} returns orders only as"
                f" {caller.subject!r}, not {request.customer_id!r}"
            )
        saga = request.saga or requests.RETURN_SAGA
        record, created, _ = await self._start(
            saga, data, request.idempotency_key, fingerprint, request.wait
        )
        return pb.ReturnOrderResponse(
            saga_id=record.saga_id,
            order_id=request.order_id,
            status=SAGA_STATUS[record.status],
            failure=failure_message(record.failure),
            existing=not created,
        )

    async def _start(
        self, saga: str, data: Message, key: str, fingerprint: str, wait: bool
    ) -> tuple[SagaRecord, bool, Message]:
        """Start a saga (or find the one the idempotency key started), wait for its outcome
        if asked; the saga as logged, whether it is new, and its data now."""
        try:
            self._refuse_if_first_participant_down(saga)
            record, created = await self._engine.start(
                saga,
                data,
                idempotency_key=key,
                request_hash=fingerprint,
                # The saga's trace, which GetSaga returns: this call's when it waits for
                # the outcome, else one of the saga's own, linked with this call.
                trace_id=saga_trace_id(waits=wait),
            )
        except Transient as refused:
            # Shed at a door (a first participant's breaker open, too many sagas running,
            # shutting down): a new saga would only wait. A retry of one the key already
            # started is answered all the same, as it adds nothing.
            record, created = await self._started_by(key, fingerprint, refused), False
        link_to_saga(record)
        if wait and record.status not in SETTLED:
            record = await self._engine.wait_settled(record.saga_id)
        definition = self._definitions.get(record.definition)
        logged = saga_data(definition, record) if definition is not None else data
        return record, created, logged

    async def _started_by(self, key: str, fingerprint: str, refused: Transient) -> SagaRecord:
        """The saga ``key`` started, for a request refused at a door; else the refusal
        stands (also when the log cannot say: it may be what refused)."""
        try:
            found = await self._log.find(key, fingerprint)
        except IdempotencyConflict:
            raise  # the key is another request's: that is the answer
        except Exception:
            log.warning("idempotency key not looked up after a refusal", exc_info=True)
            found = None
        if found is None:
            raise refused
        return found

    def _refuse_if_first_participant_down(self, saga: str) -> None:
        """Load shedding at the door: while the breaker of a participant the saga calls
        first is open, a new saga would only wait, so it is refused (UNAVAILABLE) before
        anything is written; a retry of a saga the key already started is still
        answered (:meth:`_start`)."""
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
        caller = await self._auth.caller(context, "GetSaga")
        record = await self._load(requests.saga_id(request.saga_id), caller)
        message = self._message(record)
        if record.mode == SagaMode.CHOREOGRAPHY.value:
            observed = await self._log.history(record.saga_id)
            for step in message.steps:
                step.events.extend(
                    t.detail.removeprefix(OBSERVED)
                    for t in observed
                    if t.step == step.name
                    and t.detail.startswith(OBSERVED)
                    and t.kind in (Kind.STEP_SUCCEEDED, Kind.STEP_REJECTED, Kind.COMPENSATION_DONE)
                )
        return message

    async def ListSagas(
        self, request: pb.ListSagasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSagasResponse:
        caller = await self._auth.caller(context, "ListSagas")
        status = requests.status_filter(request.status)
        size = requests.page_size(request.page_size)
        before = requests.decode_cursor(request.page_token)
        where = requests.saga_filter(request.filter)
        if caller.operator:
            found = await self._log.list_sagas(status, before, size + 1, where)
            page = found[:size]
            after = (page[-1].created_at, page[-1].saga_id) if len(found) > size else None
        else:
            page, after = await self._own_page(caller, status, before, size, where)
        return pb.ListSagasResponse(
            sagas=[self._message(r) for r in page],
            next_page_token=requests.encode_cursor(after) if after else "",
        )

    async def _own_page(
        self,
        caller: Caller,
        status: SagaStatus | None,
        before: Cursor | None,
        size: int,
        where: SagaFilter,
    ) -> tuple[list[SagaRecord], Cursor | None]:
        """Up to ``size`` of the caller's sagas after ``before``, newest first, and where
        the next page starts (None: nothing more). Reads at most _MAX_SCANNED sagas."""
        page: list[SagaRecord] = []
        cursor, scanned = before, 0
        while scanned < _MAX_SCANNED:
            batch = await self._log.list_sagas(status, cursor, _SCAN_BATCH, where)
            for record in batch:
                if len(page) == size:
                    return page, (page[-1].created_at, page[-1].saga_id)
                cursor, scanned = (record.created_at, record.saga_id), scanned + 1
                if may_see(caller, self._definitions, record):
                    page.append(record)
            if len(batch) < _SCAN_BATCH:
                return page, None
        return page, cursor

    async def WatchSaga(
        self, request: pb.WatchSagaRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SagaTransition]:
        caller = await self._auth.caller(context, "WatchSaga")
        saga_id = requests.saga_id(request.saga_id)
        await self._load(saga_id, caller)
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
        await self._auth.caller(context, "RetrySaga")
        return self._message(await self._engine.retry(requests.saga_id(request.saga_id)))

    async def ListBreakers(
        self, request: pb.ListBreakersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBreakersResponse:
        await self._auth.caller(context, "ListBreakers")
        return pb.ListBreakersResponse(
            breakers=[
                breaker_message(
                    v,
                    self._bulkheads.view(v.participant),
                    self._addresses.get(v.participant, ""),
                )
                for v in self._breakers.views()
            ]
        )

    async def CountSagas(
        self, request: pb.CountSagasRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountSagasResponse:
        await self._auth.caller(context, "CountSagas")
        where = requests.saga_filter(request.filter)
        return counts_message(await self._log.count_sagas(where))

    async def ListDefinitions(
        self, request: pb.ListDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDefinitionsResponse:
        await self._auth.caller(context, "ListDefinitions")
        return pb.ListDefinitionsResponse(
            definitions=[definition_message(d) for _, d in sorted(self._definitions.sagas.items())]
        )


def register(server: grpc.aio.Server, servicer: CoordinatorServicer) -> None:
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
