"""What the console asks the coordinator, and the one adapter that asks it over gRPC.

:class:`Coordinator` is the port the page handlers call (a fake one serves the unit
tests); :class:`GrpcCoordinator` is its adapter: one asyncio channel to the
coordinator's public API, opened like the CLI's (mutual TLS as the identity
``SAGAWIRE_TLS_IDENTITY``, operator by default, common/tls.py), every call carrying the
bearer token of the user it is made for (common/tokens.py ``with_token``). The
console never reads the saga log or any store: what a token may not read through
the API, the console cannot show.

Failed calls raise :class:`CoordinatorError`, the status as the coordinator gave it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import grpc
from google.protobuf.message import Message

from common.grpc_errors import parse_rpc_error
from common.tls import Identity
from common.tokens import with_token
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc

# Reads are answered from the saga log: a few seconds is plenty.
CALL_TIMEOUT = 10.0


class CoordinatorError(Exception):
    """A call the coordinator refused or could not answer: its gRPC status code name
    (``PERMISSION_DENIED``), the ErrorInfo reason, the message and the bad field."""

    def __init__(self, code: str, message: str, reason: str = "", field: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field


class Coordinator(Protocol):
    """The coordinator's public API as the console uses it; ``token`` is the bearer
    token of the user the call is made for (None: no token)."""

    async def list_sagas(
        self, request: pb.ListSagasRequest, token: str | None
    ) -> pb.ListSagasResponse: ...

    async def count_sagas(
        self, request: pb.CountSagasRequest, token: str | None
    ) -> pb.CountSagasResponse: ...

    async def get_saga(self, saga_id: str, token: str | None) -> pb.Saga: ...

    def watch_saga(self, saga_id: str, token: str | None) -> AsyncIterator[pb.SagaTransition]:
        """The saga's transitions from the first; ends once the saga is settled."""
        ...

    async def retry_saga(self, saga_id: str, token: str | None) -> pb.Saga: ...

    async def list_breakers(self, token: str | None) -> pb.ListBreakersResponse: ...

    async def list_definitions(self, token: str | None) -> pb.ListDefinitionsResponse: ...

    async def close(self) -> None: ...


def _error(error: grpc.aio.AioRpcError) -> CoordinatorError:
    remote = parse_rpc_error(error)
    return CoordinatorError(remote.code.name, remote.message, remote.reason, remote.field)


class GrpcCoordinator:
    """:class:`Coordinator` over one gRPC channel to ``address``."""

    def __init__(self, address: str, identity: Identity | None = None) -> None:
        self.address = address
        self._channel = (identity or Identity.from_env()).aio_channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    def _api(self, token: str | None) -> coordinator_pb2_grpc.CoordinatorStub:
        return with_token(self._stub, token)

    async def _unary(self, method: str, request: Message, token: str | None) -> Any:
        try:
            return await getattr(self._api(token), method)(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            raise _error(error) from None

    async def list_sagas(
        self, request: pb.ListSagasRequest, token: str | None
    ) -> pb.ListSagasResponse:
        return cast(pb.ListSagasResponse, await self._unary("ListSagas", request, token))

    async def count_sagas(
        self, request: pb.CountSagasRequest, token: str | None
    ) -> pb.CountSagasResponse:
        return cast(pb.CountSagasResponse, await self._unary("CountSagas", request, token))

    async def get_saga(self, saga_id: str, token: str | None) -> pb.Saga:
        request = pb.GetSagaRequest(saga_id=saga_id)
        return cast(pb.Saga, await self._unary("GetSaga", request, token))

    async def watch_saga(self, saga_id: str, token: str | None) -> AsyncIterator[pb.SagaTransition]:
        call = self._api(token).WatchSaga(pb.WatchSagaRequest(saga_id=saga_id))
        try:
            async for transition in call:
                yield transition
        except grpc.aio.AioRpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()

    async def retry_saga(self, saga_id: str, token: str | None) -> pb.Saga:
        request = pb.RetrySagaRequest(saga_id=saga_id)
        return cast(pb.Saga, await self._unary("RetrySaga", request, token))

    async def list_breakers(self, token: str | None) -> pb.ListBreakersResponse:
        request = pb.ListBreakersRequest()
        return cast(pb.ListBreakersResponse, await self._unary("ListBreakers", request, token))

    async def list_definitions(self, token: str | None) -> pb.ListDefinitionsResponse:
        request = pb.ListDefinitionsRequest()
        reply = await self._unary("ListDefinitions", request, token)
        return cast(pb.ListDefinitionsResponse, reply)

    async def close(self) -> None:
        await self._channel.close()
