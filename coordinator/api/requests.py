"""Validation of the public API's requests: INVALID_ARGUMENT naming the field, before any write."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime

from common.errors import InvalidArgument
from contract.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_DESTINATION_LENGTH,
    MAX_ID_LENGTH,
    MAX_ITEMS,
    MAX_PAGE_SIZE,
    MAX_QUANTITY,
)
from contract.modes import MODE_NAMES
from coordinator.api.views import STATUS_OF
from coordinator.log.records import SagaStatus
from coordinator.log.saga_log import Cursor, SagaFilter
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_saga_pb2

DEFAULT_SAGA = "place_order"
RETURN_SAGA = "return_order"


def _text(value: str, field: str, limit: int = MAX_ID_LENGTH) -> str:
    if not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters")
    return value


def place_order(request: pb.PlaceOrderRequest) -> tuple[order_saga_pb2.OrderSagaData, str]:
    """The saga's data for a valid request (with a new order id), and a fingerprint
    of the request, so a reused idempotency key can be told from a different order."""
    _text(request.customer_id, "customer_id")
    if not request.items:
        raise InvalidArgument("items", "must not be empty")
    if len(request.items) > MAX_ITEMS:
        raise InvalidArgument("items", f"must have at most {MAX_ITEMS} lines")
    for i, item in enumerate(request.items):
        _text(item.sku, f"items[{i}].sku")
        if not 0 < item.quantity <= MAX_QUANTITY:
            raise InvalidArgument(f"items[{i}].quantity", f"must be from 1 to {MAX_QUANTITY}")
    _text(request.destination, "destination", MAX_DESTINATION_LENGTH)
    if len(request.idempotency_key) > MAX_ID_LENGTH:
        raise InvalidArgument("idempotency_key", f"must be at most {MAX_ID_LENGTH} characters")
    if len(request.saga) > MAX_ID_LENGTH:
        raise InvalidArgument("saga", f"must be at most {MAX_ID_LENGTH} characters")
    fingerprint = pb.PlaceOrderRequest(
        customer_id=request.customer_id,
        items=request.items,
        destination=request.destination,
        saga=request.saga or DEFAULT_SAGA,
    ).SerializeToString(deterministic=True)
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()),
        customer_id=request.customer_id,
        items=request.items,
        destination=request.destination,
    )
    return data, hashlib.sha256(fingerprint).hexdigest()


def return_order(request: pb.ReturnOrderRequest) -> tuple[order_saga_pb2.OrderSagaData, str]:
    """The return saga's data for a valid request (the order and its customer: the order
    service fills in the rest), and the request's fingerprint, as for an order."""
    _text(request.order_id, "order_id")
    _text(request.customer_id, "customer_id")
    if len(request.idempotency_key) > MAX_ID_LENGTH:
        raise InvalidArgument("idempotency_key", f"must be at most {MAX_ID_LENGTH} characters")
    if len(request.saga) > MAX_ID_LENGTH:
        raise InvalidArgument("saga", f"must be at most {MAX_ID_LENGTH} characters")
    fingerprint = pb.ReturnOrderRequest(
        order_id=request.order_id,
        customer_id=request.customer_id,
        saga=request.saga or RETURN_SAGA,
    ).SerializeToString(deterministic=True)
    data = order_saga_pb2.OrderSagaData(order_id=request.order_id, customer_id=request.customer_id)
    return data, hashlib.sha256(fingerprint).hexdigest()


def saga_id(value: str, field: str = "saga_id") -> str:
    """A saga id: a UUID, in its canonical form."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(field, f"{value[:40]!r} is not a saga id (a UUID)") from None


def status_filter(value: int) -> SagaStatus | None:
    if value == pb.SAGA_STATUS_UNSPECIFIED:
        return None
    status = STATUS_OF.get(value)
    if status is None:
        raise InvalidArgument("status", f"unknown saga status {value}")
    return status


def saga_filter(value: pb.SagaFilter) -> SagaFilter:
    """The log's filter for a request's ``filter`` (an unset field matches every saga)."""
    if len(value.saga) > MAX_ID_LENGTH:
        raise InvalidArgument("filter.saga", f"must be at most {MAX_ID_LENGTH} characters")
    mode = ""
    if value.mode:
        if value.mode not in MODE_NAMES:
            raise InvalidArgument("filter.mode", f"unknown saga mode {value.mode}")
        mode = MODE_NAMES[value.mode]
    return SagaFilter(
        value.saga,
        mode,
        _time(value, "created_after"),
        _time(value, "created_before"),
    )


def _time(value: pb.SagaFilter, field: str) -> datetime | None:
    if not value.HasField(field):  # type: ignore[arg-type]
        return None
    try:
        stamp: datetime = getattr(value, field).ToDatetime(UTC)
    except ValueError as error:  # out of range
        raise InvalidArgument(f"filter.{field}", str(error)) from None
    return stamp


def page_size(value: int) -> int:
    if not 0 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be from 0 to {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def encode_cursor(cursor: Cursor) -> str:
    text = f"{cursor[0].isoformat()}|{cursor[1]}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_cursor(token: str) -> Cursor | None:
    if not token:
        return None
    try:
        created, saga = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), saga
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this server issued") from None
