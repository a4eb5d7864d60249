"""What a user owns, read through the API, for tests that assert nothing else changed."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cnop.audit import run_audit
from tests.support.wire import read


def exact(response: Any) -> Any:
    """A response body read with the project's exact JSON reader (`tests/support/wire.py`):
    every non-integer number an exact Decimal, strings stay strings."""
    return read(response)


def dec(value: Any) -> Decimal:
    """A money or quantity field as a Decimal: a decimal string (the wire format) or a number the
    exact reader already made a Decimal or int. Never a float: that would hide a rounding."""
    assert isinstance(value, str | Decimal | int) and not isinstance(value, bool), f"not exact: {value!r}"
    return Decimal(value)


@dataclass(frozen=True)
class Books:
    available: Decimal
    held: Decimal
    ledger: int
    orders: int
    holdings: dict[str, tuple[Decimal, Decimal]]


async def books(client: Any, headers: dict[str, str]) -> Books:
    balance = exact(await client.get("/api/v1/balance", headers=headers))
    ledger = await every(client, "/api/v1/balance/transactions", headers, "transactions")
    orders = await every(client, "/api/v1/orders?status=all", headers, "data")
    portfolio = exact(await client.get("/api/v1/portfolio", headers=headers))
    holdings = {a["asset_id"]: (dec(a["available"]), dec(a["held"])) for a in portfolio["assets"]}
    return Books(dec(balance["available_balance"]), dec(balance["held_balance"]), len(ledger), len(orders), holdings)


async def every(client: Any, path: str, headers: dict[str, str], field: str, limit: int = 100) -> list[Any]:
    """All items of a paged list, following `next_cursor`."""
    items: list[Any] = []
    cursor = None
    path, _, query = path.partition("?")
    while True:
        params: dict[str, Any] = dict(urllib.parse.parse_qsl(query))
        params["limit"] = limit
        if cursor:
            params["cursor"] = cursor
        r = await client.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = exact(r)
        items += page[field]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            return items


async def assert_audit_passes(store: Any) -> None:
    report = await run_audit(store)
    assert report.ok, report.violations
