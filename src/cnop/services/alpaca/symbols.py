"""Crypto symbols as Alpaca writes them: `BTC/USD` for orders and assets, `BTCUSD` for positions.

Both forms (and the bare asset id) are accepted wherever a symbol is read; only USD is quoted.
"""

from __future__ import annotations

import re

QUOTE = "USD"
_ASSET = re.compile(r"^[A-Z0-9]{1,10}$")


def pair(asset_id: str) -> str:
    return f"{asset_id}/{QUOTE}"


def compact(asset_id: str) -> str:
    return f"{asset_id}{QUOTE}"


def asset_id_of(symbol: str) -> str | None:
    """The asset a symbol names (`BTC/USD`, `BTCUSD`, `btc/usd`, `BTC`), or None if it names none."""
    text = symbol.strip().upper()
    if "/" in text:
        base, _, quote = text.partition("/")
        if quote != QUOTE:
            return None
    elif text.endswith(QUOTE) and len(text) > len(QUOTE):
        base = text[: -len(QUOTE)]
    else:
        base = text
    return base if _ASSET.match(base) else None


def candidates(symbol: str) -> list[str]:
    """Asset ids a symbol may name, most likely first (`TUSD` may be T quoted in USD, or the asset TUSD)."""
    text = symbol.strip().upper()
    found = [asset for asset in (asset_id_of(symbol),) if asset is not None]
    if "/" not in text and _ASSET.match(text) and text not in found:
        found.append(text)
    return found
