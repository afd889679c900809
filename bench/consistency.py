"""After a mode's runs: do the services' own records agree with what the sagas reported?

Through the services' read APIs only:

- every order of a saga reported COMPLETED is APPROVED, of one reported COMPENSATED is
  CANCELLED, and none of the bench's orders is left PENDING;
- money: each customer's balance went down by exactly the totals of their APPROVED
  orders (declined and refunded charges leave no trace);
- stock: per SKU, ``available`` went down and ``reserved`` went up by exactly the
  quantities of the APPROVED orders (released reservations leave no trace).

The balance and stock checks assume nobody else used the stack meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bench.closed_loop import Placed
from bench.drivers import COMPENSATED, COMPLETED
from common.paging import every_page
from common.tls import Identity
from protos.sagawire.v1 import (
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
)

_PAGE = 500
_ORDER_STATUS_OF = {
    COMPLETED: order_pb2.ORDER_STATUS_APPROVED,
    COMPENSATED: order_pb2.ORDER_STATUS_CANCELLED,
}
_TIMEOUT = 30.0


@dataclass(frozen=True)
class Snapshot:
    """Balances (minor units) per customer and (available, reserved) per SKU."""

    balances: dict[str, int]
    stock: dict[str, tuple[int, int]]


@dataclass
class Verdict:
    """What the check found; ``bad_orders`` are order ids whose record disagrees."""

    checked_orders: int = 0
    bad_orders: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


async def snapshot(addresses: Mapping[str, str]) -> Snapshot:
    operator = Identity.from_env()
    async with (
        operator.aio_channel(addresses["payment"], peer="payment") as payment,
        operator.aio_channel(addresses["inventory"], peer="inventory") as inventory,
    ):
        payment_stub = payment_pb2_grpc.PaymentStub(payment)
        inventory_stub = inventory_pb2_grpc.InventoryStub(inventory)
        accounts = await every_page(
            lambda token: payment_stub.ListAccounts(
                payment_pb2.ListAccountsRequest(page_size=_PAGE, page_token=token),
                timeout=_TIMEOUT,
            ),
            lambda reply: reply.accounts,
        )
        stock = await every_page(
            lambda token: inventory_stub.ListStock(
                inventory_pb2.ListStockRequest(page_size=_PAGE, page_token=token),
                timeout=_TIMEOUT,
            ),
            lambda reply: reply.stock,
        )
    return Snapshot(
        balances={a.customer_id: a.balance.amount_minor for a in accounts},
        stock={s.sku: (s.available, s.reserved) for s in stock},
    )


async def _orders(address: str, wanted: set[str]) -> dict[str, order_pb2.OrderRecord]:
    """The wanted orders, paging newest first until all are found (or the list ends)."""
    found: dict[str, order_pb2.OrderRecord] = {}
    token = ""
    async with Identity.from_env().aio_channel(
        address, peer="order", options=[("grpc.max_receive_message_length", 16 << 20)]
    ) as channel:
        stub = order_pb2_grpc.OrderStub(channel)
        while len(found) < len(wanted):
            page = await stub.ListOrders(
                order_pb2.ListOrdersRequest(page_size=_PAGE, page_token=token), timeout=_TIMEOUT
            )
            found.update((o.order_id, o) for o in page.orders if o.order_id in wanted)
            token = page.next_page_token
            if not token:
                break
    return found


async def verify(
    addresses: Mapping[str, str], before: Snapshot, after: Snapshot, placed: Iterable[Placed]
) -> Verdict:
    """Compare the services' records with the sagas' reported outcomes (module docstring)."""
    verdict = Verdict()
    reported = {p.outcome.order_id: p.outcome.status for p in placed if p.outcome.order_id}
    orders = await _orders(addresses["order"], set(reported))
    verdict.checked_orders = len(orders)
    wrong: Counter[str] = Counter()
    for order_id, status in reported.items():
        record = orders.get(order_id)
        if record is None:
            # An order that was never created (e.g. rejected at create) is fine only then.
            if status == COMPLETED:
                verdict.bad_orders.add(order_id)
                wrong["COMPLETED saga without an order"] += 1
            continue
        expected = _ORDER_STATUS_OF.get(status)
        if record.status == order_pb2.ORDER_STATUS_PENDING or (
            expected is not None and record.status != expected
        ):
            verdict.bad_orders.add(order_id)
            name = order_pb2.OrderStatus.Name(record.status).removeprefix("ORDER_STATUS_")
            wrong[f"{status} saga, order {name}"] += 1
    verdict.problems.extend(f"{n} x {kind}" for kind, n in wrong.items())

    charged: Counter[str] = Counter()
    taken: Counter[str] = Counter()
    for record in orders.values():
        if record.status == order_pb2.ORDER_STATUS_APPROVED:
            charged[record.customer_id] += record.total.amount_minor
            for item in record.items:
                taken[item.sku] += item.quantity
    for customer in set(charged) | {c for c in before.balances if c in after.balances}:
        spent = before.balances.get(customer, 0) - after.balances.get(customer, 0)
        if spent != charged[customer]:
            verdict.problems.append(
                f"money: {customer} paid {spent}, approved orders total {charged[customer]}"
            )
    for sku in set(taken) | set(before.stock):
        available0, reserved0 = before.stock.get(sku, (0, 0))
        available1, reserved1 = after.stock.get(sku, (0, 0))
        if available0 - available1 != taken[sku] or reserved1 - reserved0 != taken[sku]:
            verdict.problems.append(
                f"stock: {sku} available -{available0 - available1}, "
                f"reserved +{reserved1 - reserved0}, approved orders took {taken[sku]}"
            )
    return verdict
