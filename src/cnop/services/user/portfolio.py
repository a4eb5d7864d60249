"""Portfolio use cases: holdings valued at live prices, with cost basis and P&L."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from pydantic import BaseModel

from cnop.common.clock import Clock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.entities.holding import Holding
from cnop.common.exceptions import HoldingNotFound
from cnop.common.money import CENT, MONEY_CONTEXT, Percent, Price, Quantity, UsdAmount, or_none
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

    async def portfolio(self, username: str) -> Portfolio:
        balance, holdings = await self.holdings.get_balance_and_holdings(username)
        names = await self._names() if holdings else {}
        rows: list[PortfolioAsset] = []
        for holding in holdings:
            if holding.quantity == 0:
                continue
            price = self._price(holding.asset_id)
            value = self._value(holding.quantity, price)
            rows.append(
                PortfolioAsset(
                    asset_id=holding.asset_id,
                    asset_name=names.get(holding.asset_id, holding.asset_id),
                    quantity=holding.quantity,
                    available=holding.available,
                    held=holding.held,
                    current_price=price,
                    market_value=value,
                    cost_basis=holding.cost_basis,
                    average_price=self._average(holding),
                    unrealized_pnl=self._pnl(value, holding.cost_basis),
                    percentage=None,
                )
            )
        cash_total = balance.current_balance
        total = cash_total + sum((r.market_value or Decimal(0) for r in rows), Decimal(0))
        if total > 0:
            rows = [r.model_copy(update={"percentage": self._share(r.market_value, total)}) for r in rows]
        rows.sort(key=lambda r: (-(r.market_value or Decimal(0)), r.asset_id))
        return Portfolio(
            assets=rows,
            cash=CashSummary(available=balance.available, held=balance.held, total=cash_total),
            total_value=total,
            updated_at=self.clock.now(),
        )

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
