"""The number rules every price source shares: rounding to 8 significant digits, plain notation."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from cnop.common.money import MONEY_CONTEXT

PRICE_SIGNIFICANT_DIGITS = 8
PRICE_MAX_PLACES = 8


def round_price(value: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """`value` to 8 significant digits and at most 8 places, in plain (non-exponent) notation."""
    exponent = min(0, max(value.adjusted() - (PRICE_SIGNIFICANT_DIGITS - 1), -PRICE_MAX_PLACES))
    return value.quantize(Decimal(1).scaleb(exponent), rounding=rounding, context=MONEY_CONTEXT)


# No price (or upstream figure) this system accepts is anywhere near this large.
LARGEST_ACCEPTED_NUMBER = Decimal("1e18")


def plain_number(value: Decimal) -> Decimal:
    """`1E+3` written as `1000` (an exponent form must never reach a client).

    Raises ValueError for a magnitude of 10^18 or more, which no price here can have.
    """
    if abs(value) >= LARGEST_ACCEPTED_NUMBER:
        raise ValueError(f"number {value} is implausibly large")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return value.quantize(Decimal(1), context=MONEY_CONTEXT)
    return value
