"""Exact money: Decimal amounts, per-asset scales, exact JSON in and out."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_DOWN, ROUND_UP, Context, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

USD_SCALE = 2
DEFAULT_ASSET_SCALE = 8

# Enough precision that no amount this system handles is ever rounded by arithmetic.
MONEY_CONTEXT = Context(prec=38)

ZERO = Decimal(0)


def parse_decimal(value: Any) -> Decimal:
    """Parse a JSON number or numeric string exactly.

    Request bodies are parsed with `parse_float=Decimal` (see `cnop.common.jsonio`), so numbers
    arrive here as Decimal or int; a float (from a Python caller) is read from its shortest repr.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise ValueError("must be a number")
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise ValueError("must be a number") from None
    else:
        raise ValueError("must be a number")
    if not result.is_finite():
        raise ValueError("must be a finite number")
    return result


def places(value: Decimal) -> int:
    """Digits after the decimal point that `value` needs (trailing zeros don't count)."""
    # Read from the digits, not from `normalize()`: a context would round or flush an extreme
    # value (1e-2000000 normalizes to 0 and would seem to have no places at all).
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError("must be a finite number")
    if not any(digits):
        return 0
    trailing_zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return max(0, -(exponent + trailing_zeros))


def quantize(value: Decimal, scale: int) -> Decimal:
    """`value` written with exactly `scale` places; raises ValueError if digits would be lost."""
    if places(value) > scale:
        raise ValueError(f"must have at most {scale} decimal places")
    return value.quantize(Decimal(1).scaleb(-scale), context=MONEY_CONTEXT)


def round_down(value: Decimal, scale: int) -> Decimal:
    """Toward zero: what a user receives never exceeds what the arithmetic gives."""
    return value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_DOWN, context=MONEY_CONTEXT)


def round_up(value: Decimal, scale: int) -> Decimal:
    """Away from zero: what a user pays never falls short of what the arithmetic gives."""
    return value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_UP, context=MONEY_CONTEXT)


def or_none(compute: Callable[[], Decimal]) -> Decimal | None:
    """`compute()`, or None when decimal arithmetic cannot give a finite answer.

    Valuation multiplies what is stored (a quantity) by what a feed said (a price); whatever those
    are, a read must answer, not fail: an amount too large for the precision (quantize's
    InvalidOperation), an exponent out of range (Overflow) or a division by zero is "unknown".
    """
    try:
        result = compute()
    except ArithmeticError:  # InvalidOperation, Overflow, DivisionByZero, ...
        return None
    return result if result.is_finite() else None


def describe_amount(value: Decimal, places: int = 2) -> str:
    """`value` rounded to `places` for a message, or in scientific notation if it is too large for that."""
    rounded = or_none(lambda: value.quantize(Decimal(1).scaleb(-places), context=MONEY_CONTEXT))
    return f"{rounded}" if rounded is not None else f"{value:.6E}"


def usd(value: Decimal) -> Decimal:
    """A USD amount with exactly two places; raises ValueError if it has more."""
    return quantize(value, USD_SCALE)


# A Decimal field that accepts a JSON number or numeric string exactly. Responses are encoded by
# `cnop.common.jsonio`, which writes Decimals as bare JSON numbers with their exact digits.
Money = Annotated[
    Decimal,
    BeforeValidator(parse_decimal),
    WithJsonSchema({"type": "number"}, mode="serialization"),
    WithJsonSchema(
        {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}]},
        mode="validation",
    ),
]
