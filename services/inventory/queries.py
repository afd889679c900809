"""Inventory's read-only API: the truth about stock and reservations."""

from __future__ import annotations

import grpc

from common import paging
from common.errors import NotFound
from common.participant import require_id
from common.store import Connection, Store
from protos.sagawire.v1 import inventory_pb2, inventory_pb2_grpc
from services.inventory import domain, store


class InventoryQueries(inventory_pb2_grpc.InventoryServicer):
    def __init__(self, db: Store) -> None:
        self._db = db

    async def GetStock(
        self, request: inventory_pb2.GetStockRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Stock:
        require_id(request.sku, "sku")
        found = await self._db.read(lambda conn: store.levels(conn, [request.sku]))
        if request.sku not in found:
            raise NotFound(f"unknown SKU {request.sku}")
        level = found[request.sku]
        return inventory_pb2.Stock(
            sku=level.sku, available=level.available, reserved=level.reserved
        )

    async def ListStock(
        self, request: inventory_pb2.ListStockRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ListStockResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, "stock", (str,))
        found = await self._db.read(
            lambda conn: store.list_levels(conn, str(after[0]) if after else None, size + 1)
        )
        page, token = paging.cut(found, size, "stock", lambda lv: (lv.sku,))
        return inventory_pb2.ListStockResponse(
            stock=[
                inventory_pb2.Stock(sku=lv.sku, available=lv.available, reserved=lv.reserved)
                for lv in page
            ],
            next_page_token=token,
        )

    async def GetReservation(
        self, request: inventory_pb2.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Reservation:
        require_id(request.saga_id, "saga_id")

        def query(conn: Connection) -> list[tuple[domain.Line, str]]:
            return store.reservation_lines(conn, request.saga_id)

        lines = await self._db.read(query)
        if not lines:
            raise NotFound(f"no reservation for saga {request.saga_id}")
        released = all(status == "released" for _, status in lines)
        return inventory_pb2.Reservation(
            saga_id=request.saga_id,
            lines=[inventory_pb2.ReservedLine(sku=ln.sku, quantity=ln.quantity) for ln, _ in lines],
            status=inventory_pb2.RESERVATION_STATUS_RELEASED
            if released
            else inventory_pb2.RESERVATION_STATUS_RESERVED,
        )


def register(server: grpc.aio.Server, db: Store) -> None:
    inventory_pb2_grpc.add_InventoryServicer_to_server(InventoryQueries(db), server)
