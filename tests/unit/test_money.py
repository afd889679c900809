"""Money formatted from integer minor units, never through a float."""

from __future__ import annotations

import pytest

from common.money import format_money


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (4900, "EUR", "49.00 EUR"),
        (1000, "EUR", "10.00 EUR"),
        (5, "EUR", "0.05 EUR"),
        (0, "EUR", "0.00 EUR"),
        (-1, "EUR", "-0.01 EUR"),
        (123456, "EUR", "1,234.56 EUR"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (1500, "", "15.00"),
    ],
)
def test_minor_units_read_as_money(amount: int, currency: str, text: str) -> None:
    assert format_money(amount, currency) == text


def test_amounts_beyond_a_float_keep_every_digit() -> None:
    # 2^53 + 1 cents: a float would round the last cent away.
    assert format_money(2**53 + 1, "EUR") == "90,071,992,547,409.93 EUR"
