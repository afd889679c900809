"""The error table and its round trip: error -> rich status -> failed call -> error."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from common import grpc_errors
from common.errors import (
    Aborted,
    BreakerOpen,
    BusinessRejection,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestMismatch,
    SagawireError,
    Transient,
    TransientKind,
    Unauthenticated,
)


def as_failed_call(error: SagawireError) -> grpc.aio.AioRpcError:
    """What a client receives when a servicer aborts with ``rich_status(error)``."""
    code, message, trailers = grpc_errors.rich_status(error)
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=message
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("payload.items", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("no order 7"), grpc.StatusCode.NOT_FOUND),
        (BusinessRejection("INSUFFICIENT_FUNDS", "no"), grpc.StatusCode.FAILED_PRECONDITION),
        (Aborted("compensated"), grpc.StatusCode.ABORTED),
        (RequestMismatch("another request"), grpc.StatusCode.FAILED_PRECONDITION),
        (Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED),
        (Transient("flaky"), grpc.StatusCode.UNAVAILABLE),
        (Transient("slow", TransientKind.TIMED_OUT), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Transient("busy", TransientKind.OVERLOADED), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Transient("stopping", TransientKind.CANCELLED), grpc.StatusCode.CANCELLED),
        (BreakerOpen("open"), grpc.StatusCode.UNAVAILABLE),
        (Internal("bug"), grpc.StatusCode.INTERNAL),
        (SagawireError("not in the table"), grpc.StatusCode.INTERNAL),
    ],
)
def test_every_error_has_its_status_code(error: SagawireError, code: grpc.StatusCode) -> None:
    assert grpc_errors.status_code_for(error) == code
    assert grpc_errors.rich_status(error)[0] == code


def test_only_transient_codes_are_retryable() -> None:
    assert {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,  # by a server shutting down, not by the caller
    } == grpc_errors.TRANSIENT_CODES
    for error_class, code in grpc_errors.STATUS_CODES:
        assert (code in grpc_errors.TRANSIENT_CODES) == issubclass(error_class, Transient)


def test_invalid_argument_round_trips_with_its_field() -> None:
    remote = grpc_errors.parse_rpc_error(
        as_failed_call(InvalidArgument("payload.total", "too big"))
    )
    assert remote == grpc_errors.RemoteError(
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="",
        message="payload.total: too big",
        field="payload.total",
    )
    back = grpc_errors.error_from_remote(remote)
    assert isinstance(back, InvalidArgument)
    assert back.field == "payload.total"


def test_business_rejection_round_trips_with_its_reason() -> None:
    rejection = BusinessRejection("INSUFFICIENT_STOCK", "SKU-RARE: 2 requested", sku="SKU-RARE")
    remote = grpc_errors.parse_rpc_error(as_failed_call(rejection))
    assert remote.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (remote.reason, remote.message) == ("INSUFFICIENT_STOCK", "SKU-RARE: 2 requested")
    back = grpc_errors.error_from_remote(remote)
    assert isinstance(back, BusinessRejection)
    assert back.reason == "INSUFFICIENT_STOCK"


@pytest.mark.parametrize(
    ("error", "expected_class", "reason"),
    [
        (NotFound("no order 7"), NotFound, "NOTFOUND"),
        (Aborted("compensated"), Aborted, "COMPENSATED_BEFORE_EXECUTE"),
        # FAILED_PRECONDITION, but not a business "no": its reason tells them apart.
        (RequestMismatch("another request"), RequestMismatch, "REQUEST_MISMATCH"),
        (Unauthenticated("no token"), Unauthenticated, "UNAUTHENTICATED"),
        (PermissionDenied("not yours"), PermissionDenied, "PERMISSION_DENIED"),
        (Transient("flaky"), Transient, "TRANSIENT"),
    ],
)
def test_other_errors_round_trip_into_the_same_class(
    error: SagawireError, expected_class: type[SagawireError], reason: str
) -> None:
    remote = grpc_errors.parse_rpc_error(as_failed_call(error))
    assert remote.reason == reason
    assert remote.message == error.message
    assert type(grpc_errors.error_from_remote(remote)) is expected_class


@pytest.mark.parametrize("kind", list(TransientKind))
def test_transient_keeps_its_kind_through_the_round_trip(kind: TransientKind) -> None:
    busy = Transient("busy", kind)
    remote = grpc_errors.parse_rpc_error(as_failed_call(busy))
    assert remote.reason == "TRANSIENT"
    back = grpc_errors.error_from_remote(remote)
    assert isinstance(back, Transient)
    assert back.kind is kind


def test_the_error_tree_does_not_load_grpc() -> None:
    """Domain code raises these errors without loading the transport (STYLE rule 9)."""
    script = "import sys, common.errors; print('grpc' in sys.modules)"
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "False"


def test_internal_error_details_never_leave_the_process() -> None:
    secret = "sqlite3.IntegrityError: UNIQUE constraint failed: charge.saga_id"
    code, message, trailers = grpc_errors.rich_status(Internal(secret))
    assert (code, message) == (grpc.StatusCode.INTERNAL, "internal error")
    assert all(b"sqlite" not in value and b"UNIQUE" not in value for _, value in trailers)
    remote = grpc_errors.parse_rpc_error(as_failed_call(Internal(secret)))
    assert (remote.message, remote.reason) == ("internal error", "INTERNAL")


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no order " + "é" * 100_000),
        InvalidArgument("items", "x" * 100_000),
        BusinessRejection("UNKNOWN_SKU", "unknown SKU", sku="s" * 100_000),
    ],
    ids=["message", "field violation", "metadata"],
)
def test_a_message_quoting_a_huge_request_leaves_cut_short(error: SagawireError) -> None:
    """Within a caller's default metadata limit (8 KiB), even in multi-byte characters."""
    code, message, trailers = grpc_errors.rich_status(error)
    assert len(message) <= grpc_errors.MAX_MESSAGE_CHARS + 40
    percent_encoded = sum(3 * len(c.encode()) if ord(c) > 126 else 1 for c in message)
    assert percent_encoded + sum(len(value) * 4 // 3 for _, value in trailers) < 8 * 1024
    remote = grpc_errors.parse_rpc_error(as_failed_call(error))
    assert (remote.code, remote.message) == (code, message)


def test_a_call_without_rich_details_still_parses() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )
    remote = grpc_errors.parse_rpc_error(bare)
    assert remote == grpc_errors.RemoteError(grpc.StatusCode.UNAVAILABLE, "", "down")
    assert isinstance(grpc_errors.error_from_remote(remote), Transient)


def test_translate_rpc_errors_raises_the_matching_error() -> None:
    failed = as_failed_call(BusinessRejection("UNKNOWN_CUSTOMER", "no account for mallory"))
    with pytest.raises(BusinessRejection) as caught, grpc_errors.translate_rpc_errors():
        raise failed
    assert caught.value.reason == "UNKNOWN_CUSTOMER"
    assert caught.value.__cause__ is failed


def test_a_call_cancelled_by_a_server_shutting_down_is_retried() -> None:
    # What gRPC core reports for a call that reached a stopping server but no handler.
    cancelled = grpc.aio.AioRpcError(
        grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Cancelled"
    )
    error = grpc_errors.error_from_remote(grpc_errors.parse_rpc_error(cancelled))
    assert isinstance(error, Transient) and error.kind is TransientKind.CANCELLED
