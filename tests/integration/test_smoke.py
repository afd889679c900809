"""A first end-to-end check that the four services answer over gRPC."""

from __future__ import annotations

import uuid

from common.participant import pack
from protos.sagawire.v1 import common_pb2, inventory_pb2, order_saga_pb2, participant_pb2
from tests.support import Cluster


async def test_reserve_then_release_restores_stock(cluster: Cluster) -> None:
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()), customer_id="alice", destination="Berlin",
        items=[common_pb2.LineItem(sku="SKU-MUG", quantity=3)],
    )
    saga_id = str(uuid.uuid4())
    before = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
    request = participant_pb2.StepRequest(
        saga_id=saga_id, step="reserve_stock", action="reserve", payload=pack(data)
    )
    await cluster.participant("inventory").Execute(request)
    held = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
    assert (held.available, held.reserved) == (before.available - 3, 3)
    request.action = "release"
    await cluster.participant("inventory").Compensate(request)
    after = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-MUG"))
    assert (after.available, after.reserved) == (before.available, 0)
