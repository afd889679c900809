"""Order's read-only API: one order, or a page of them, newest first."""

from __future__ import annotations

import grpc

from common import paging
from common.errors import InvalidArgument, NotFound
from common.participant import require_id
from common.store import Row, Store, to_timestamp
from protos.sagawire.v1 import common_pb2, order_pb2, order_pb2_grpc, order_saga_pb2
from services.order import store

_STATUS = {
    "pending": order_pb2.ORDER_STATUS_PENDING,
    "approved": order_pb2.ORDER_STATUS_APPROVED,
    "cancelled": order_pb2.ORDER_STATUS_CANCELLED,
    "returned": order_pb2.ORDER_STATUS_RETURNED,
}
_STATUS_NAME = {v: k for k, v in _STATUS.items()}


def _order_msg(row: Row) -> order_pb2.OrderRecord:
    return order_pb2.OrderRecord(
        order_id=row["order_id"],
        saga_id=row["saga_id"],
        customer_id=row["customer_id"],
        items=order_saga_pb2.OrderSagaData.FromString(row["items"]).items,
        destination=row["destination"],
        total=common_pb2.Money(amount_minor=row["total_minor"], currency=row["currency"]),
        status=_STATUS[row["status"]],
        reason=row["reason"],
        created_at=to_timestamp(row["created_at"]),
        updated_at=to_timestamp(row["updated_at"]),
    )


class OrderQueries(order_pb2_grpc.OrderServicer):
    def __init__(self, db: Store) -> None:
        self._db = db

    async def GetOrder(
        self, request: order_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.OrderRecord:
        require_id(request.order_id, "order_id")
        row = await self._db.read(lambda conn: store.order(conn, request.order_id))
        if row is None:
            raise NotFound(f"no order {request.order_id}")
        return _order_msg(row)

    async def ListOrders(
        self, request: order_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.ListOrdersResponse:
        if request.status and request.status not in _STATUS_NAME:
            raise InvalidArgument("status", f"unknown order status {request.status}")
        size = paging.page_size(request.page_size)
        before = paging.decode_token(request.page_token, "orders", (str, str))
        key = (str(before[0]), str(before[1])) if before else None
        status = _STATUS_NAME.get(request.status)
        rows = await self._db.read(lambda conn: store.list_orders(conn, status, key, size + 1))
        page, token = paging.cut(rows, size, "orders", lambda r: (r["created_at"], r["order_id"]))
        return order_pb2.ListOrdersResponse(
            orders=[_order_msg(r) for r in page], next_page_token=token
        )


def register(server: grpc.aio.Server, db: Store) -> None:
    order_pb2_grpc.add_OrderServicer_to_server(OrderQueries(db), server)
