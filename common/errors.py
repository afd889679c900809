"""One error tree for all of Sagawire, and the single table that maps it to gRPC.

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
    ├── Transient                may succeed if tried again
    │   └── BreakerOpen          the caller's circuit breaker refused the call
    └── Internal                 a bug; its details never leave the process

Servicers raise these; :func:`grpc_edge` turns them into a status with
``google.rpc.ErrorInfo`` / ``BadRequest`` details. Clients wrap calls in
:func:`translate_rpc_errors` to get the same tree back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker: a library-typing gap.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

ERROR_DOMAIN = "sagawire.dev"
# Longest message (and ErrorInfo metadata value) a status carries out of the process.
MAX_MESSAGE_CHARS = 300
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


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


class Transient(SagawireError):
    """A failure that may go away: the call can be retried with the same key."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


class BreakerOpen(Transient):
    """The circuit breaker for a participant is open: the call was not made."""


class Internal(SagawireError):
    """An unexpected failure. Callers see only a generic message."""


# The single table from error class to gRPC status code (most specific first).
STATUS_CODES: tuple[tuple[type[SagawireError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (BusinessRejection, grpc.StatusCode.FAILED_PRECONDITION),
    (Aborted, grpc.StatusCode.ABORTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Transient, grpc.StatusCode.UNAVAILABLE),
    (Internal, grpc.StatusCode.INTERNAL),
)

# Codes a caller may retry with the same idempotency key; nothing else is retried.
# CANCELLED reaches a caller that did not cancel when the server is shutting down:
# gRPC reports a call that had arrived but not reached a handler that way
# (grpc/grpc#41785), and the call never ran; one that did ran in one transaction
# behind its barrier, so a retry replays it.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


def status_code_for(error: SagawireError) -> grpc.StatusCode:
    """Look up the gRPC code for an error in :data:`STATUS_CODES`."""
    if isinstance(error, Transient):
        return error.code
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _bounded(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def _status_details(error: SagawireError, code: grpc.StatusCode, message: str) -> bytes:
    detail = any_pb2.Any()
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_bounded(error.field), description=message
        )
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    else:
        reason = getattr(error, "reason", type(error).__name__.upper())
        metadata = {key: _bounded(value) for key, value in getattr(error, "metadata", {}).items()}
        detail.Pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    serialized: bytes = status.SerializeToString()
    return serialized


def rich_status(error: SagawireError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The (code, details, trailing metadata) with which a servicer aborts for ``error``.

    The message and the ErrorInfo metadata are cut to :data:`MAX_MESSAGE_CHARS` each: a
    message quoting the request could otherwise exceed the caller's metadata limit, and
    the caller would get an error about the error.
    """
    code = status_code_for(error)
    if isinstance(error, Internal):
        error = Internal("internal error")
    message = _bounded(error.message)
    return code, message, ((_STATUS_DETAILS_KEY, _status_details(error, code, message)),)


async def abort(context: grpc.aio.ServicerContext, error: SagawireError) -> NoReturn:
    """End the RPC with the status for ``error``.

    Uses ``context.abort(code, details, trailing_metadata)`` rather than
    ``abort_with_status`` so the OpenTelemetry server interceptor sees the code.
    """
    code, message, trailers = rich_status(error)
    await context.abort(code, message, trailers)
    raise AssertionError("unreachable")  # context.abort always raises


_R = TypeVar("_R")


async def grpc_edge(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[_R]]) -> _R:
    """Run a servicer body, translating our errors (and any bug) into a gRPC status."""
    try:
        return await call()
    except SagawireError as error:
        await abort(context, error)
    except grpc.aio.AbortError:
        raise
    except Exception:
        # A bug: log it with its traceback here; the caller learns nothing internal.
        log.exception("unhandled error in %s", getattr(call, "__qualname__", repr(call)))
        await abort(context, Internal("internal error"))


@dataclass(frozen=True)
class RemoteError:
    """What a failed call told us: code, ErrorInfo reason, message, field."""

    code: grpc.StatusCode
    reason: str
    message: str
    field: str = ""


def parse_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> RemoteError:
    """Read the code, message and rich details (ErrorInfo / BadRequest) of a failed call."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason, bad_field = "", ""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(bad) and bad.field_violations:
                bad_field = bad.field_violations[0].field
    return RemoteError(code=code, reason=reason, message=message, field=bad_field)


def error_from_remote(remote: RemoteError) -> SagawireError:
    """Map a :class:`RemoteError` back into the error tree."""
    code = remote.code
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(remote.field or "request", remote.message)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(remote.message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if remote.reason == RequestMismatch.REASON:
            return RequestMismatch(remote.message)
        if remote.reason == SagaExpired.REASON:
            return SagaExpired(remote.message)
        return BusinessRejection(remote.reason or "REJECTED", remote.message)
    if code == grpc.StatusCode.ABORTED:
        return Aborted(remote.message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(remote.message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(remote.message)
    if code in TRANSIENT_CODES:
        return Transient(remote.message, code)
    return Internal(f"{code.name}: {remote.message}")


@contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Client side: turn a failed gRPC call into the matching :class:`SagawireError`."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_remote(parse_rpc_error(error)) from error


__all__ = [
    "TRANSIENT_CODES",
    "Aborted",
    "BreakerOpen",
    "BusinessRejection",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "RequestMismatch",
    "SagaExpired",
    "SagawireError",
    "Transient",
    "Unauthenticated",
    "abort",
    "error_from_remote",
    "grpc_edge",
    "parse_rpc_error",
    "rich_status",
    "translate_rpc_errors",
]
