"""Exact money: Decimal amounts, per-asset scales, and the one wire format for decimal fields.

On the wire (decision 0008) every field that holds a Decimal is a JSON string in plain notation:
USD amounts always with two places (`"1000.00"`), quantities, prices and percentages as their
exact value without padding (`"0.001"`, `"67250.12"`). The response types below (`UsdAmount`,
`Quantity`, `Price`, `Percent`) carry that serializer and their OpenAPI schema.

Input numbers follow one grammar (`decimal_input`): a string matches `INPUT_PATTERN` (ASCII
digits, no sign, exponent, spaces or separators); a JSON number is read exactly by the request
reader (`cnop.common.jsonio.loads_request`, never through float), its text at most
`MAX_NUMBER_TEXT` characters, and judged after parsing. Then, for both: no more decimal places
than the field allows (422, never rounded), inside the field's bounds, not zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Context, Decimal, InvalidOperation
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

USD_SCALE = 2
DEFAULT_ASSET_SCALE = 8

# Enough precision that no amount this system handles is ever rounded by arithmetic.
MONEY_CONTEXT = Context(prec=38)
# For judging input: wide enough that quantizing any accepted text is exact (the text is at most
# 40 characters, and the bounds are checked before anything is quantized).
_JUDGE_CONTEXT = Context(prec=200, Emax=999_999_999, Emin=-999_999_999)

ZERO = Decimal(0)
CENT = Decimal("0.01")

# --- the input grammar -------------------------------------------------------------------------

INPUT_PATTERN: Final = r"^[0-9]{1,20}(\.[0-9]{1,18})?$"
_INPUT_RE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,18})?")  # used with fullmatch: no `$`-before-newline
MAX_NUMBER_TEXT: Final = 40
INPUT_MAX_PLACES: Final = 18
_GRAMMAR_MESSAGE = (
    "must be a JSON number or a string of ASCII digits with at most one '.' "
    "(up to 20 digits before it and 18 after; no sign, exponent, spaces or separators)"
)


class RejectedNumber:
    """What the request reader puts in place of a JSON value no numeric field may accept.

    `NaN`/`Infinity` (not JSON, but some encoders write them) and number texts longer than
    `MAX_NUMBER_TEXT` become one of these, so the field they were sent for is the one named in
    the 422 (a field of another type refuses it as the wrong type).
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"RejectedNumber({self.reason!r})"


def read_number(value: Any) -> Decimal:
    """The exact Decimal of an input value, by the grammar; ValueError names what is wrong.

    Accepts a string matching `INPUT_PATTERN`, an int, or a Decimal (what the request reader
    makes of a JSON number). Refuses everything else: booleans, floats (their text is lost),
    non-finite values, nested values, and `RejectedNumber`s.
    """
    kind = type(value)
    if kind is str:
        if _INPUT_RE.fullmatch(value) is None:
            raise ValueError(_GRAMMAR_MESSAGE)
        return Decimal(value)
    if kind is Decimal:
        if not value.is_finite():
            raise ValueError("must be a finite number")
        result: Decimal = value
        return result
    if kind is int:
        return Decimal(value)
    if kind is bool:
        raise ValueError("must be a number, not a boolean")
    if kind is RejectedNumber:
        raise ValueError(value.reason)
    if kind is float:
        raise ValueError("must be an exact number (a JSON number or a numeric string), not a binary float")
    raise ValueError("must be a number or a numeric string")


def decimal_input(*, places: int, maximum: Decimal, below: bool = False, pad: bool = False) -> Callable[[Any], Decimal]:
    """The validator of one numeric input field: the grammar, then scale and bounds.

    `places`: most decimal places allowed (more is refused, never rounded). `maximum`: the
    largest value allowed, or with `below` the bound the value must stay under. Every field is
    > 0. The result is canonical: `pad` (USD) gives exactly `places` places, otherwise the value
    without trailing zeros, so `1`, `1.0` and `"1.00"` are one value.
    """
    step = Decimal(1).scaleb(-places)
    too_big = f"must be less than {maximum}" if below else f"must be at most {maximum}"

    def validate(value: Any) -> Decimal:
        number = read_number(value)
        if number <= 0:
            raise ValueError("must be greater than 0")
        if number > maximum or (below and number == maximum):
            raise ValueError(too_big)
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)
        if exponent < -places:
            quantized = number.quantize(step, rounding=ROUND_DOWN, context=_JUDGE_CONTEXT)
            if quantized != number:
                raise ValueError(f"must have at most {places} decimal places")
            number = quantized
        if number.is_zero():
            raise ValueError("must be greater than 0")
        if pad:
            return number.quantize(step, context=_JUDGE_CONTEXT)
        return canonical(number)

    return validate


def input_schema(*, places: int, maximum: Decimal, below: bool = False) -> dict[str, Any]:
    """The OpenAPI schema of a numeric input field: a number, or a string matching the grammar."""
    number: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
    number["exclusiveMaximum" if below else "maximum"] = int(maximum)
    return {
        "anyOf": [number, {"type": "string", "pattern": INPUT_PATTERN}],
        "description": f"Exact decimal, > 0, at most {places} decimal places: a JSON number (read exactly, its "
        f"text at most {MAX_NUMBER_TEXT} characters) or a string matching the pattern.",
    }


# --- the output format -------------------------------------------------------------------------


def plain_text(value: Decimal) -> str:
    """The exact value in plain notation without padding: `0.001`, `67250.12`, `1000`, `-0.5`."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def usd_text(value: Decimal) -> str:
    """A USD amount with exactly two places: `1000.00`, `-6172.84`."""
    if value.as_tuple().exponent != -USD_SCALE:
        try:
            value = value.quantize(CENT, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)
        except ArithmeticError:  # more digits than any real amount: written exactly, never a 500
            return plain_text(value)
    text = format(value, "f")
    return "0.00" if text == "-0.00" else text


def canonical(value: Decimal) -> Decimal:
    """The same value without trailing zeros, never with a positive exponent (`1E+3` -> `1000`)."""
    normal = value.normalize(_JUDGE_CONTEXT)
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)
    return normal.quantize(Decimal(1)) if exponent > 0 else normal


USD_PATTERN: Final = r"^-?[0-9]+\.[0-9]{2}$"
PLAIN_PATTERN: Final = r"^-?[0-9]+(\.[0-9]*[1-9])?$"
DECIMAL_PATTERN: Final = r"^-?[0-9]+(\.[0-9]+)?$"
_USD_SCHEMA = {
    "type": "string",
    "pattern": USD_PATTERN,
    "description": "USD amount, exact, always two decimal places",
    "examples": ["1000.00"],
}
_PLAIN_SCHEMA = {
    "type": "string",
    "pattern": PLAIN_PATTERN,
    "description": "Exact decimal in plain notation, without padding",
    "examples": ["0.001"],
}


# A field whose unit depends on the record (an order's `held_amount`: USD for buys, units for
# sells) is written by its model's own serializer and documented with this schema.
DECIMAL_TEXT_SCHEMA = {
    "type": "string",
    "pattern": DECIMAL_PATTERN,
    "description": "Exact decimal in plain notation",
    "examples": ["400.00", "0.1"],
}

# Response field types. A response model is built from stored Decimals; these only shape the wire.
UsdAmount = Annotated[Decimal, PlainSerializer(usd_text, return_type=str), WithJsonSchema(_USD_SCHEMA)]
"""A USD amount: cash, totals, cost basis, P&L, values of holdings. `"1000.00"`."""
Quantity = Annotated[Decimal, PlainSerializer(plain_text, return_type=str), WithJsonSchema(_PLAIN_SCHEMA)]
"""Units of an asset (or supply figures). `"0.001"`."""
Price = Annotated[Decimal, PlainSerializer(plain_text, return_type=str), WithJsonSchema(_PLAIN_SCHEMA)]
"""A price per unit, or a market-data figure quoted in USD (market cap, volume). `"67250.12"`."""
Percent = Annotated[Decimal, PlainSerializer(plain_text, return_type=str), WithJsonSchema(_PLAIN_SCHEMA)]
"""A percentage. `"42.31"`."""

# Request field types: the grammar, the field's scale and bounds, and the same wire format back
# (so a request model dumps canonical text, e.g. for idempotency fingerprints).
MAX_AMOUNT = Decimal(1_000_000)
MAX_PRICE = Decimal(1_000_000)
MAX_QUANTITY = Decimal(1_000_000_000_000_000)
MAX_PERCENT = Decimal(100)
PRICE_PLACES = 8
PERCENT_PLACES = 4

UsdAmountInput = Annotated[
    Decimal,
    BeforeValidator(decimal_input(places=USD_SCALE, maximum=MAX_AMOUNT, pad=True)),
    PlainSerializer(usd_text, return_type=str),
    WithJsonSchema(input_schema(places=USD_SCALE, maximum=MAX_AMOUNT), mode="validation"),
]
"""Deposit and withdraw amounts: > 0, at most 1,000,000, at most 2 places."""
QuantityInput = Annotated[
    Decimal,
    BeforeValidator(decimal_input(places=INPUT_MAX_PLACES, maximum=MAX_QUANTITY)),
    PlainSerializer(plain_text, return_type=str),
    WithJsonSchema(input_schema(places=INPUT_MAX_PLACES, maximum=MAX_QUANTITY), mode="validation"),
]
"""An order quantity: > 0; the asset's own scale and minimum are checked where the asset is known."""
PriceInput = Annotated[
    Decimal,
    BeforeValidator(decimal_input(places=PRICE_PLACES, maximum=MAX_PRICE)),
    PlainSerializer(plain_text, return_type=str),
    WithJsonSchema(input_schema(places=PRICE_PLACES, maximum=MAX_PRICE), mode="validation"),
]
"""A price or price distance: > 0, at most 1,000,000, at most 8 places."""
PercentInput = Annotated[
    Decimal,
    BeforeValidator(decimal_input(places=PERCENT_PLACES, maximum=MAX_PERCENT, below=True)),
    PlainSerializer(plain_text, return_type=str),
    WithJsonSchema(input_schema(places=PERCENT_PLACES, maximum=MAX_PERCENT, below=True), mode="validation"),
]
"""A trailing percentage: > 0, below 100, at most 4 places."""


# --- arithmetic helpers ------------------------------------------------------------------------


def parse_decimal(value: Any) -> Decimal:
    """Parse a number from a data file or price source exactly (not for API input: see `read_number`).

    Sources are parsed with `parse_float=Decimal`, so numbers arrive here as Decimal or int; a
    float (from a Python caller) is read from its shortest repr.
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
