"""Who may call what: one declared table, enforced by one server interceptor.

The caller's identity is the ``spiffe://sagawire/<name>`` URI of the client certificate
it presented (mutual TLS, common/tls.py); gRPC verified that certificate against the
stack's CA before any call arrives. :data:`TABLE` names, per method or per service,
who may call it:

=============================================  ==============================================
method or service                              callers
=============================================  ==============================================
sagawire.v1.Participant (Execute, Compensate)  coordinator
sagawire.v1.EventStream/Subscribe              order, inventory, payment, shipping,
                                               coordinator, operator (``sagawire events``)
sagawire.v1.EventStream/ListPoisonEvents       coordinator, operator
sagawire.v1.Order, Inventory, Payment,         coordinator, operator
Shipping (the services' read APIs)
sagawire.v1.Admin (fault injection)            operator
sagawire.v1.Coordinator (the public API)       any caller the transport admitted; the bearer
                                               token decides what it may do (coordinator/api/)
grpc.health.v1.Health, server reflection       any caller
=============================================  ==============================================

A call the table does not allow ends before any handler runs: ``UNAUTHENTICATED`` when
the caller has no identity (no certificate, or one without a Sagawire SPIFFE URI),
``PERMISSION_DENIED`` when its identity is not listed. A method the table does not name
is refused too (the table fails closed).

With ``SAGAWIRE_TLS=off`` nobody has an identity, so nothing can be told apart: the
interceptor lets every call through (trusted-network mode) and the process says so
loudly at start.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc

from common.certs import COORDINATOR, OPERATOR, identity_of_uri
from common.config import SERVICE_NAMES
from common.handlers import guarded

log = logging.getLogger(__name__)


class Anyone:
    """A table entry open to every caller, with or without an identity."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"Anyone({self.why!r})"


Callers = frozenset[str] | Anyone

SERVICES = frozenset(SERVICE_NAMES)
READERS = frozenset({COORDINATOR, OPERATOR})

# Keys are a full method name ("/package.Service/Method") or a service ("package.Service");
# the method's own entry wins.
TABLE: Mapping[str, Callers] = {
    "sagawire.v1.Participant": frozenset({COORDINATOR}),
    "/sagawire.v1.EventStream/Subscribe": SERVICES | READERS,
    "/sagawire.v1.EventStream/ListPoisonEvents": READERS,
    "sagawire.v1.Order": READERS,
    "sagawire.v1.Inventory": READERS,
    "sagawire.v1.Payment": READERS,
    "sagawire.v1.Shipping": READERS,
    "sagawire.v1.Admin": frozenset({OPERATOR}),
    "sagawire.v1.Coordinator": Anyone("the bearer token authorises each call"),
    "grpc.health.v1.Health": Anyone("health checks stay open"),
    "grpc.reflection.v1alpha.ServerReflection": Anyone("reflection describes the API only"),
    "grpc.reflection.v1.ServerReflection": Anyone("reflection describes the API only"),
}


def callers_of(method: str, table: Mapping[str, Callers] = TABLE) -> Callers | None:
    """Who may call ``method`` ("/package.Service/Method"); None when the table is silent."""
    if method in table:
        return table[method]
    service = method.lstrip("/").partition("/")[0]
    return table.get(service)


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's Sagawire identity from its verified certificate, or None."""
    # gRPC sets peer_spiffe_id when the certificate carries exactly one valid SPIFFE URI.
    for uri in context.auth_context().get("peer_spiffe_id", ()):
        identity = identity_of_uri(uri.decode(errors="replace"))
        if identity is not None:
            return identity
    return None


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Checks every call against the table before its handler runs.

    ``enforce`` is False in plaintext mode, where no caller has an identity.
    """

    def __init__(self, *, enforce: bool = True, table: Mapping[str, Callers] = TABLE) -> None:
        self._enforce = enforce
        self._table = table

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._enforce:
            return handler
        method: str = handler_call_details.method
        callers = callers_of(method, self._table)
        if isinstance(callers, Anyone):
            return handler
        return guarded(handler, _Check(method, callers).guard)


class _Check:
    """The check of one method: abort the call unless the caller is allowed."""

    def __init__(self, method: str, callers: frozenset[str] | None) -> None:
        self.method = method
        self.callers = callers

    async def __call__(self, context: grpc.aio.ServicerContext) -> None:
        identity = peer_identity(context)
        if identity is None:
            log.warning(
                "refused call without identity method=%s peer=%s", self.method, context.peer()
            )
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{self.method} needs a client certificate from the stack's CA",
            )
        if self.callers is None or identity not in self.callers:
            log.warning("refused call method=%s caller=%s", self.method, identity)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not call {self.method}"
            )

    @asynccontextmanager
    async def guard(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Run the check before the behaviour (common/handlers.py)."""
        await self(context)
        yield request
