"""Payment's read-only API: balances and charges, a page at a time."""

from __future__ import annotations

import grpc

from common import paging
from common.errors import NotFound
from common.participant import require_id
from common.store import Connection, Row, Store, to_timestamp
from protos.sagawire.v1 import common_pb2, payment_pb2, payment_pb2_grpc
from services.payment import store
from services.payment.domain import Account

_STATUS = {
    "captured": payment_pb2.CHARGE_STATUS_CAPTURED,
    "refunded": payment_pb2.CHARGE_STATUS_REFUNDED,
}


def _account_msg(acct: Account) -> payment_pb2.Account:
    return payment_pb2.Account(
        customer_id=acct.customer_id,
        balance=common_pb2.Money(amount_minor=acct.balance_minor, currency=acct.currency),
    )


def _charge_msg(row: Row) -> payment_pb2.Charge:
    return payment_pb2.Charge(
        charge_id=row["charge_id"],
        saga_id=row["saga_id"],
        customer_id=row["customer_id"],
        amount=common_pb2.Money(amount_minor=row["amount_minor"], currency=row["currency"]),
        status=_STATUS[row["status"]],
        created_at=to_timestamp(row["created_at"]),
    )


class PaymentQueries(payment_pb2_grpc.PaymentServicer):
    def __init__(self, db: Store) -> None:
        self._db = db

    async def GetAccount(
        self, request: payment_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.Account:
        require_id(request.customer_id, "customer_id")
        acct = await self._db.read(lambda conn: store.account(conn, request.customer_id))
        if acct is None:
            raise NotFound(f"no account for customer {request.customer_id}")
        return _account_msg(acct)

    async def ListAccounts(
        self, request: payment_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.ListAccountsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, "accounts", (str,))
        found = await self._db.read(
            lambda conn: store.list_accounts(conn, str(after[0]) if after else None, size + 1)
        )
        page, token = paging.cut(found, size, "accounts", lambda a: (a.customer_id,))
        return payment_pb2.ListAccountsResponse(
            accounts=[_account_msg(a) for a in page], next_page_token=token
        )

    async def ListCharges(
        self, request: payment_pb2.ListChargesRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.ListChargesResponse:
        size = paging.page_size(request.page_size)
        before = paging.decode_token(request.page_token, "charges", (str, str))

        def query(conn: Connection) -> list[Row]:
            key = (str(before[0]), str(before[1])) if before else None
            return store.charges(conn, request.customer_id, request.saga_id, key, size + 1)

        rows = await self._db.read(query)
        page, token = paging.cut(rows, size, "charges", lambda r: (r["created_at"], r["charge_id"]))
        return payment_pb2.ListChargesResponse(
            charges=[_charge_msg(r) for r in page], next_page_token=token
        )


def register(server: grpc.aio.Server, db: Store) -> None:
    payment_pb2_grpc.add_PaymentServicer_to_server(PaymentQueries(db), server)
