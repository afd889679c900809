"""Payment rules: customer balances, charged and refunded by sagas. Pure: no I/O.

Money is integer minor units in one currency per account. Invariant: the sum of
balances plus the captured (not refunded) charges never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.errors import BusinessRejection
from common.money import format_money


@dataclass(frozen=True)
class Account:
    customer_id: str
    balance_minor: int
    currency: str


def charge(account: Account | None, customer_id: str, amount_minor: int, currency: str) -> Account:
    """Take ``amount_minor`` from the account.

    Raises:
        BusinessRejection: UNKNOWN_CUSTOMER, CURRENCY_MISMATCH or INSUFFICIENT_FUNDS.
    """
    if account is None:
        raise BusinessRejection(
            "UNKNOWN_CUSTOMER", f"no account for customer {customer_id}", customer_id=customer_id
        )
    if amount_minor <= 0:
        raise ValueError("charge amount must be positive")
    if currency != account.currency:
        raise BusinessRejection(
            "CURRENCY_MISMATCH", f"account is in {account.currency}, charge is in {currency}"
        )
    if amount_minor > account.balance_minor:
        raise BusinessRejection(
            "INSUFFICIENT_FUNDS",
            f"charge of {format_money(amount_minor, currency)} exceeds the balance of"
            f" {format_money(account.balance_minor, account.currency)}",
            customer_id=customer_id,
        )
    return replace(account, balance_minor=account.balance_minor - amount_minor)


def refund(account: Account, amount_minor: int) -> Account:
    """Give a captured charge back (the compensation of :func:`charge`)."""
    if amount_minor <= 0:
        raise ValueError("refund amount must be positive")
    return replace(account, balance_minor=account.balance_minor + amount_minor)
