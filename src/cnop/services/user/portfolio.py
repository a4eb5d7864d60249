"""Portfolio use cases: holdings valued at live prices, with cost basis and P&L."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pydantic import BaseModel

from cnop.common.clock import Clock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.entities.balance import Balance
from cnop.common.entities.holding import Holding
from cnop.common.exceptions import HoldingNotFound
from cnop.common.money import (
    CENT,
    MONEY_CONTEXT,
    Percent,
    Price,
    Quantity,
    UsdAmount,
    or_none,
    plain_text,
    usd_text,
)
from cnop.market.prices import PriceBook


class PortfolioAsset(BaseModel):
    asset_id: str
    asset_name: str
    quantity: Quantity
    available: Quantity
    held: Quantity
    current_price: Price | None
    market_value: UsdAmount | None
    cost_basis: UsdAmount
    average_price: Price | None
    unrealized_pnl: UsdAmount | None
    percentage: Percent | None


class CashSummary(BaseModel):
    available: UsdAmount
    held: UsdAmount
    total: UsdAmount


class Portfolio(BaseModel):
    assets: list[PortfolioAsset]
    cash: CashSummary
    total_value: UsdAmount
    updated_at: datetime


def _text_or_none(write: Callable[[Decimal], str], value: Decimal | None) -> str | None:
    return None if value is None else write(value)


def _row_wire(row: dict[str, Any]) -> dict[str, Any]:
    """A row of `_rows` as `PortfolioAsset(**row).model_dump(mode="python")` writes it."""
    return {
        "asset_id": row["asset_id"],
        "asset_name": row["asset_name"],
        "quantity": plain_text(row["quantity"]),
        "available": plain_text(row["available"]),
        "held": plain_text(row["held"]),
        "current_price": _text_or_none(plain_text, row["current_price"]),
        "market_value": _text_or_none(usd_text, row["market_value"]),
        "cost_basis": usd_text(row["cost_basis"]),
        "average_price": _text_or_none(plain_text, row["average_price"]),
        "unrealized_pnl": _text_or_none(usd_text, row["unrealized_pnl"]),
        "percentage": _text_or_none(plain_text, row["percentage"]),
    }


class AssetBalance(BaseModel):
    asset_id: str
    asset_name: str
    quantity: Quantity
    available: Quantity
    held: Quantity
    current_price: Price | None
    total_value: UsdAmount | None
    cost_basis: UsdAmount
    average_price: Price | None
    created_at: datetime
    updated_at: datetime


class PortfolioService:
    def __init__(
        self, balances: BalanceDAO, holdings: HoldingDAO, assets: AssetDAO, prices: PriceBook, clock: Clock
    ) -> None:
        self.balances = balances
        self.holdings = holdings
        self.assets = assets
        self.prices = prices
        self.clock = clock

    def _price(self, asset_id: str) -> Decimal | None:
        tick = self.prices.current(asset_id)
        return tick.price if tick else None

    @staticmethod
    def _value(quantity: Decimal, price: Decimal | None) -> Decimal | None:
        """What `quantity` is worth at `price`, to the cent; None if unpriced or beyond arithmetic."""
        if price is None:
            return None
        return or_none(lambda: (quantity * price).quantize(CENT, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT))

    @staticmethod
    def _pnl(value: Decimal | None, cost_basis: Decimal) -> Decimal | None:
        return or_none(lambda: value - cost_basis) if value is not None else None

    @staticmethod
    def _share(value: Decimal | None, total: Decimal) -> Decimal | None:
        if value is None:
            return None
        return or_none(lambda: (value / total * 100).quantize(CENT, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT))

    async def _names(self) -> dict[str, str]:
        """Every asset's name, from the DAO's cached asset list (no store read per holding)."""
        return {asset.asset_id: asset.name for asset in await self.assets.all_assets()}

    @staticmethod
    def _average(holding: Holding) -> Decimal | None:
        if holding.quantity == 0:
            return None
        return or_none(
            lambda: (holding.cost_basis / holding.quantity).quantize(Decimal("0.00000001"), rounding=ROUND_HALF_EVEN)
        )

    async def _rows(self, username: str) -> tuple[list[dict[str, Any]], Balance, Decimal]:
        """The portfolio's rows as `PortfolioAsset`'s fields (Decimals, in their order), sorted,
        the cash balance, and the total value."""
        balance, holdings = await self.holdings.get_balance_and_holdings(username)
        names = await self._names() if holdings else {}
        rows: list[dict[str, Any]] = []
        for holding in holdings:
            quantity = holding.quantity
            if quantity == 0:
                continue
            price = self._price(holding.asset_id)
            value = self._value(quantity, price)
            rows.append(
                {
                    "asset_id": holding.asset_id,
                    "asset_name": names.get(holding.asset_id, holding.asset_id),
                    "quantity": quantity,
                    "available": holding.available,
                    "held": holding.held,
                    "current_price": price,
                    "market_value": value,
                    "cost_basis": holding.cost_basis,
                    "average_price": self._average(holding),
                    "unrealized_pnl": self._pnl(value, holding.cost_basis),
                    "percentage": None,
                }
            )
        cash_total = balance.current_balance
        total = cash_total + sum((r["market_value"] or Decimal(0) for r in rows), Decimal(0))
        if total > 0:
            for row in rows:
                row["percentage"] = self._share(row["market_value"], total)
        rows.sort(key=lambda r: (-(r["market_value"] or Decimal(0)), r["asset_id"]))
        return rows, balance, total

    async def portfolio(self, username: str) -> Portfolio:
        rows, balance, total = await self._rows(username)
        return Portfolio(
            assets=[PortfolioAsset(**row) for row in rows],
            cash=CashSummary(available=balance.available, held=balance.held, total=balance.current_balance),
            total_value=total,
            updated_at=self.clock.now(),
        )

    async def portfolio_wire(self, username: str) -> dict[str, Any]:
        """What `portfolio(username).model_dump(mode="python")` gives, without building the models
        (`GET /portfolio` is a hot read; a test holds the two equal)."""
        rows, balance, total = await self._rows(username)
        return {
            "assets": [_row_wire(row) for row in rows],
            "cash": {
                "available": usd_text(balance.available),
                "held": usd_text(balance.held),
                "total": usd_text(balance.current_balance),
            },
            "total_value": usd_text(total),
            "updated_at": self.clock.now(),
        }

    async def asset_balance(self, username: str, asset_id: str) -> AssetBalance:
        asset = await self.assets.get_asset(asset_id)
        holding = await self.holdings.get_holding(username, asset_id)
        if holding is None:
            raise HoldingNotFound(f"You hold no {asset_id}")
        price = self._price(asset_id)
        return AssetBalance(
            asset_id=asset_id,
            asset_name=asset.name,
            quantity=holding.quantity,
            available=holding.available,
            held=holding.held,
            current_price=price,
            total_value=self._value(holding.quantity, price),
            cost_basis=holding.cost_basis,
            average_price=self._average(holding),
            created_at=holding.created_at,
            updated_at=holding.updated_at,
        )
