"""How numbers and times read on the pages: exact Decimals, each at its own scale, never via float."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from cnop.common.clock import parse_isoformat
from cnop.common.money import MONEY_CONTEXT

DASH = "—"
MINUS = "−"


def _fixed(value: Decimal, places: int) -> str:
    exponent = Decimal(1).scaleb(-places)
    rounded = value.quantize(exponent, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)
    return f"{abs(rounded):,.{places}f}"


def _price_places(value: Decimal) -> int:
    """Two places from 1 USD up; below that as many as the price has, four to eight."""
    if abs(value) >= 1:
        return 2
    exponent = value.normalize(MONEY_CONTEXT).as_tuple().exponent
    needed = -exponent if isinstance(exponent, int) else 8
    return min(8, max(4, needed))


def usd(value: Decimal | None) -> str:
    """`$1,234.50`; negative `−$3.10`."""
    if value is None:
        return DASH
    text = "$" + _fixed(value, 2)
    return MINUS + text if value < 0 and text.strip("$0.,") else text


def signed_usd(value: Decimal | None) -> str:
    """`+$12.30` / `−$12.30` / `$0.00`, for profits and losses."""
    if value is None:
        return DASH
    text = usd(value)
    return "+" + text if value > 0 and text.strip("$0.,") else text


def price(value: Decimal | None) -> str:
    if value is None:
        return DASH
    text = "$" + _fixed(value, _price_places(value))
    return MINUS + text if value < 0 else text


def plain_price(value: Decimal | None) -> str:
    """A price as an input's value: its exact digits, no grouping or sign."""
    return DASH if value is None else format(value.normalize(MONEY_CONTEXT), "f")


def quantity(value: Decimal | None, scale: int = 8) -> str:
    if value is None:
        return DASH
    text = _fixed(value, scale)
    return MINUS + text if value < 0 else text


def compact_usd(value: Decimal | None) -> str:
    """`$1.33T`, `$45.20B`, `$812.00M` for big reference figures; exact below a million."""
    if value is None:
        return DASH
    for size, suffix in ((Decimal(10) ** 12, "T"), (Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M")):
        if abs(value) >= size:
            return usd(value / size) + suffix
    return usd(value)


def percent(value: Decimal | None) -> str:
    """`+1.23%` / `−4.50%`."""
    if value is None:
        return DASH
    text = _fixed(value, 2) + "%"
    if value > 0:
        return "+" + text
    return MINUS + text if value < 0 and text.strip("0.,%") else text


def direction(value: Decimal | None) -> str:
    """A CSS class for a change: `up`, `down` or `flat`."""
    if value is None or value == 0:
        return "flat"
    return "up" if value > 0 else "down"


def when(moment: datetime | str | None) -> str:
    if moment is None:
        return DASH
    if isinstance(moment, str):
        moment = parse_isoformat(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def label(value: object) -> str:
    """`stop_loss_sell` → `Stop loss sell`."""
    text = str(getattr(value, "value", value)).replace("_", " ")
    return text[:1].upper() + text[1:]


FILTERS = {
    "usd": usd,
    "signed_usd": signed_usd,
    "price": price,
    "plain_price": plain_price,
    "quantity": quantity,
    "percent": percent,
    "compact_usd": compact_usd,
    "direction": direction,
    "when": when,
    "label": label,
}
