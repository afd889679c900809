"""The error tree at the gRPC edge: one status table, both directions.

Server side, :class:`ErrorStatus` (the innermost interceptor of every server,
common/server.py) ends a call whose servicer raised a :class:`~common.errors.SagawireError`
with the status the table gives it, with ``google.rpc.ErrorInfo`` / ``BadRequest`` details;
any other exception is a bug: logged here with its traceback, INTERNAL to the caller,
nothing internal in the message. Servicers just raise.

Client side, :func:`translate_rpc_errors` turns a failed call back into the same tree;
:func:`parse_rpc_error` reads what it said (code, ErrorInfo reason, field).

:mod:`common.errors` imports no grpc; this module is where the tree meets it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker: a library-typing gap.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from common.errors import (
    Aborted,
    BusinessRejection,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestMismatch,
    SagaExpired,
    SagawireError,
    Transient,
    TransientKind,
    Unauthenticated,
)
from common.handlers import guarded

log = logging.getLogger(__name__)

ERROR_DOMAIN = "sagawire.dev"
# Longest message (and ErrorInfo metadata value) a status carries out of the process.
MAX_MESSAGE_CHARS = 300
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

# The single table from error class to gRPC status code (most specific first); a
# Transient's code is its kind's, below.
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

TRANSIENT_KIND_CODES: dict[TransientKind, grpc.StatusCode] = {
    TransientKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    TransientKind.TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    TransientKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TransientKind.CANCELLED: grpc.StatusCode.CANCELLED,
}
_KIND_OF_CODE = {code: kind for kind, code in TRANSIENT_KIND_CODES.items()}

# Codes a caller may retry with the same idempotency key; nothing else is retried.
# CANCELLED reaches a caller that did not cancel when the server is shutting down:
# gRPC reports a call that had arrived but not reached a handler that way
# (grpc/grpc#41785), and the call never ran; one that did ran in one transaction
# behind its barrier, so a retry replays it.
TRANSIENT_CODES = frozenset(TRANSIENT_KIND_CODES.values())


def status_code_for(error: SagawireError) -> grpc.StatusCode:
    """Look up the gRPC code for an error in :data:`STATUS_CODES`."""
    if isinstance(error, Transient):
        return TRANSIENT_KIND_CODES[error.kind]
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


class ErrorStatus(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Every servicer's edge: our errors (and any bug) become a status.

    Installed innermost, so what it ends a call with is what the interceptors around it
    (tracing, authorisation, limits) see, as if the servicer had aborted itself.
    """

    def __init__(self) -> None:
        # Per method: the handler gRPC found and the guarded one made from it.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = guarded(handler, _Edge(method).guard)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _Edge:
    """The edge of one method: translate what its behaviour raised."""

    def __init__(self, method: str) -> None:
        self.method = method

    @asynccontextmanager
    async def guard(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            yield request
        except SagawireError as error:
            await abort(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            # A bug: log it with its traceback here; the caller learns nothing internal.
            log.exception("unhandled error in %s", self.method)
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
        return Transient(remote.message, _KIND_OF_CODE[code])
    return Internal(f"{code.name}: {remote.message}")


@contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Client side: turn a failed gRPC call into the matching :class:`SagawireError`."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_remote(parse_rpc_error(error)) from error


__all__ = [
    "ERROR_DOMAIN",
    "STATUS_CODES",
    "TRANSIENT_CODES",
    "ErrorStatus",
    "RemoteError",
    "abort",
    "error_from_remote",
    "parse_rpc_error",
    "rich_status",
    "status_code_for",
    "translate_rpc_errors",
]
