"""Who may do what through the coordinator's public API, ``sagawire.v1.Coordinator``.

Every call carries a bearer token (JWT, common/tokens.py) in its ``authorization``
metadata; a call without a valid one is refused UNAUTHENTICATED before anything
else is looked at. Then one table:

===============  ==========================================  ===================
method           customer (``sub`` = the customer id)        operator
===============  ==========================================  ===================
PlaceOrder       as itself only (else PERMISSION_DENIED)     for any customer
ReturnOrder      as itself only (else PERMISSION_DENIED)     for any customer
GetSaga          its own sagas (another's: NOT_FOUND)        every saga
WatchSaga        its own sagas (another's: NOT_FOUND)        every saga
ListSagas        its own sagas only                          every saga
RetrySaga        PERMISSION_DENIED                           yes
ListBreakers     PERMISSION_DENIED                           yes
CountSagas       PERMISSION_DENIED                           yes
ListDefinitions  yes (what its own sagas show anyway)        yes
===============  ==========================================  ===================

A customer asking for another customer's saga gets the same NOT_FOUND as for a saga
that does not exist, so saga ids tell nobody whose orders exist. A saga belongs to
the customer its data names (``customer_id`` of the saga's input); a saga whose data
names none is an operator's only. A customer returns only its own orders: the API lets
it name only itself, and the order service refuses to return an order to anyone but
the customer who placed it (ORDER_NOT_FOUND, as for an order that does not exist).
With ``SAGAWIRE_AUTH=off`` every caller is an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2

from common.errors import PermissionDenied, Unauthenticated
from common.tokens import (
    AUTH_OFF_WARNING,
    UNCHECKED,
    Caller,
    Role,
    TokenSettings,
    TokenVerifier,
    bearer_token,
)
from contract.definitions import Definitions
from coordinator.log.records import SagaRecord

log = logging.getLogger(__name__)

_ANYONE = frozenset(Role)
_OPERATOR = frozenset({Role.OPERATOR})

# Who may call each method at all; what a customer then sees is scoped by ownership.
METHODS: Mapping[str, frozenset[Role]] = {
    "PlaceOrder": _ANYONE,
    "ReturnOrder": _ANYONE,
    "GetSaga": _ANYONE,
    "WatchSaga": _ANYONE,
    "ListSagas": _ANYONE,
    "RetrySaga": _OPERATOR,
    "ListBreakers": _OPERATOR,
    # Counting reads every saga of the log: an operator's overview, not a customer's.
    "CountSagas": _OPERATOR,
    # A definition's steps are what a customer's own sagas show in GetSaga.
    "ListDefinitions": _ANYONE,
}


class ApiAuth:
    """The callers of the public API: from their token, checked against :data:`METHODS`."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        """``verifier`` None: auth is off, every caller is an operator."""
        self._verifier = verifier

    @classmethod
    def from_settings(cls, settings: TokenSettings) -> ApiAuth:
        """On, with the local key (made if missing) or the configured JWKS; or off, loudly."""
        if not settings.auth:
            log.warning(AUTH_OFF_WARNING)
            return cls(None)
        verifier = TokenVerifier(settings)
        source = "local key " + str(settings.key_path) if settings.local_key else "JWKS"
        log.info(
            "bearer tokens required issuer=%s audience=%s keys=%s",
            settings.token_issuer,
            settings.token_audience,
            source,
        )
        return cls(verifier)

    async def caller(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        """Who calls ``method``; raises if nobody valid, or someone who may not call it."""
        if self._verifier is None:
            return UNCHECKED
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated(
                "no bearer token: send the metadata 'authorization: Bearer <JWT>'"
                " (sagawire token issue)"
            )
        caller = await self._verifier.verify(token)
        if caller.role not in METHODS[method]:
            raise PermissionDenied(f"{method} needs an operator token")
        return caller


def owner(definitions: Definitions, record: SagaRecord) -> str:
    """The customer a saga belongs to: the ``customer_id`` its input names ("" if none)."""
    definition = definitions.get(record.definition)
    if definition is None:
        return ""
    data = definition.new_data()
    if not any_pb2.Any.FromString(record.data).Unpack(data):
        return ""
    return str(getattr(data, "customer_id", ""))


def may_see(caller: Caller, definitions: Definitions, record: SagaRecord) -> bool:
    """Whether ``caller`` may read the saga: an operator, or the customer it belongs to."""
    return caller.acts_for(owner(definitions, record))
