"""One error tree for all of Sagawire, free of the transport.

::

    SagawireError
    ├── InvalidArgument          bad input at the edge; names the offending field
    ├── NotFound                 the thing asked for does not exist
    ├── BusinessRejection        a final "no" from the domain (ErrorInfo reason)
    │   ├── RequestMismatch      the barrier's key holds a different request (REQUEST_MISMATCH)
    │   └── SagaExpired          a request of a saga older than the barrier's horizon (SAGA_EXPIRED)
    ├── Aborted                  refused by the barrier (execute after compensate)
    ├── Unauthenticated          no valid credentials (a bearer token, a certificate)
    ├── PermissionDenied         valid credentials that may not do this
    ├── Transient                may succeed if tried again (its kind: unavailable, timed out...)
    │   └── BreakerOpen          the caller's circuit breaker refused the call
    └── Internal                 a bug; its details never leave the process

Free of any transport, as httpx keeps ``_exceptions.py`` free of httpcore: domain code
raises these without loading grpc. :mod:`common.grpc_errors` is the edge: its table maps
each error to a gRPC status (with ``google.rpc.ErrorInfo`` / ``BadRequest`` details), one
server interceptor applies it to every servicer, and clients wrap calls in its
``translate_rpc_errors`` to get the same tree back.
"""

from __future__ import annotations

import enum


class SagawireError(Exception):
    """Root of every error Sagawire raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SagawireError):
    """The request is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(SagawireError):
    """The thing asked for does not exist."""


class BusinessRejection(SagawireError):
    """A final business "no" (insufficient stock, declined payment...). Never retried."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata)


class RequestMismatch(BusinessRejection):
    """The barrier refused the call: the key (saga, step) already holds a request with a
    different fingerprint, so this one is not a repeat of it. Nothing was done.

    Final like any rejection: the same request will always be refused. For its
    caller the step did not take effect (the barrier guarantees that much).
    """

    REASON = "REQUEST_MISMATCH"

    def __init__(self, message: str) -> None:
        super().__init__(self.REASON, message)


class SagaExpired(BusinessRejection):
    """The barrier refused the call: its saga was created longer ago than the barrier
    keeps rows for finished sagas, and the barrier holds nothing of this step: a late
    duplicate of a finished saga, whose first answer retention has removed. Nothing was
    done (common/barrier.py says why this is safe).

    Final like any rejection: the same request will always be refused.
    """

    REASON = "SAGA_EXPIRED"

    def __init__(self, message: str) -> None:
        super().__init__(self.REASON, message)


class Aborted(SagawireError):
    """The barrier refused the call: its compensation already ran."""

    reason = "COMPENSATED_BEFORE_EXECUTE"


class Unauthenticated(SagawireError):
    """The caller did not prove who it is: no credentials, or invalid ones."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(SagawireError):
    """The caller is known, and may not do this."""

    reason = "PERMISSION_DENIED"


class TransientKind(enum.Enum):
    """Why a :class:`Transient` failure happened; the edge gives each its status code."""

    UNAVAILABLE = "unavailable"  # the other side is down, or refused for now
    TIMED_OUT = "timed out"  # no answer within the deadline
    OVERLOADED = "overloaded"  # a limit was reached: too many sagas, streams...
    CANCELLED = "cancelled"  # cut short by a server shutting down, before it ran


class Transient(SagawireError):
    """A failure that may go away: the call can be retried with the same key."""

    def __init__(self, message: str, kind: TransientKind = TransientKind.UNAVAILABLE) -> None:
        super().__init__(message)
        self.kind = kind


class BreakerOpen(Transient):
    """The circuit breaker for a participant is open: the call was not made."""


class Internal(SagawireError):
    """An unexpected failure. Callers see only a generic message."""


__all__ = [
    "Aborted",
    "BreakerOpen",
    "BusinessRejection",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RequestMismatch",
    "SagaExpired",
    "SagawireError",
    "Transient",
    "TransientKind",
    "Unauthenticated",
]
