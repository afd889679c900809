"""Money as a person reads it, from integer minor units: never through a float.

Amounts travel and are stored as integer minor units with an ISO 4217 currency code
(``Money.amount_minor`` / ``currency`` on the wire). Everything a person reads — the
CLI, ``sagawire events tail``, a rejection's message — formats them here::

    format_money(4900, "EUR")    -> "49.00 EUR"
    format_money(123456, "EUR")  -> "1,234.56 EUR"
    format_money(500, "JPY")     -> "500 JPY"
    format_money(-1, "EUR")      -> "-0.01 EUR"
"""

from __future__ import annotations

# Currencies whose minor unit is not a hundredth (ISO 4217); every other has two decimals.
_DECIMALS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"), 0),
    **dict.fromkeys(("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def decimals(currency: str) -> int:
    """How many decimal places the currency's minor unit has (2 for most)."""
    return _DECIMALS.get(currency.upper(), 2)


def format_money(amount_minor: int, currency: str) -> str:
    """``amount_minor`` minor units of ``currency`` as text, with thousands separators."""
    places = decimals(currency)
    sign = "-" if amount_minor < 0 else ""
    units, fraction = divmod(abs(int(amount_minor)), 10**places)
    number = f"{units:,}.{fraction:0{places}d}" if places else f"{units:,}"
    return f"{sign}{number} {currency}".rstrip()
