"""Shipping's read-only API: shipments by id, by saga, and a page at a time."""

from __future__ import annotations

import grpc

from common import paging
from common.errors import NotFound
from common.participant import require_id
from common.store import Row, Store, to_timestamp
from protos.sagawire.v1 import shipping_pb2, shipping_pb2_grpc
from services.shipping import store

_STATUS = {
    "scheduled": shipping_pb2.SHIPMENT_STATUS_SCHEDULED,
    "cancelled": shipping_pb2.SHIPMENT_STATUS_CANCELLED,
}


def _shipment_msg(row: Row) -> shipping_pb2.Shipment:
    return shipping_pb2.Shipment(
        shipment_id=row["shipment_id"],
        saga_id=row["saga_id"],
        order_id=row["order_id"],
        destination=row["destination"],
        tracking_number=row["tracking_number"],
        status=_STATUS[row["status"]],
        created_at=to_timestamp(row["created_at"]),
    )


class ShippingQueries(shipping_pb2_grpc.ShippingServicer):
    def __init__(self, db: Store) -> None:
        self._db = db

    async def _one(self, column: str, value: str) -> shipping_pb2.Shipment:
        require_id(value, column)
        row = await self._db.read(lambda conn: store.shipment(conn, column, value))
        if row is None:
            raise NotFound(f"no shipment with {column} {value}")
        return _shipment_msg(row)

    async def GetShipment(
        self, request: shipping_pb2.GetShipmentRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.Shipment:
        return await self._one("shipment_id", request.shipment_id)

    async def GetShipmentBySaga(
        self, request: shipping_pb2.GetShipmentBySagaRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.Shipment:
        return await self._one("saga_id", request.saga_id)

    async def ListShipments(
        self, request: shipping_pb2.ListShipmentsRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.ListShipmentsResponse:
        size = paging.page_size(request.page_size)
        before = paging.decode_token(request.page_token, "shipments", (str, str))
        key = (str(before[0]), str(before[1])) if before else None
        rows = await self._db.read(lambda conn: store.list_shipments(conn, key, size + 1))
        page, token = paging.cut(
            rows, size, "shipments", lambda r: (r["created_at"], r["shipment_id"])
        )
        return shipping_pb2.ListShipmentsResponse(
            shipments=[_shipment_msg(r) for r in page], next_page_token=token
        )


def register(server: grpc.aio.Server, db: Store) -> None:
    shipping_pb2_grpc.add_ShippingServicer_to_server(ShippingQueries(db), server)
