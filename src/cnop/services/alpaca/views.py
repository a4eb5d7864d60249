"""Reads the compat routes answer with: the account, positions and assets, from the same DAOs and prices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

from fastapi import Depends

from cnop.common.clock import Clock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.entities.asset import Asset
from cnop.common.entities.holding import Holding
from cnop.common.entities.user import User
from cnop.common.exceptions import NotFound
from cnop.common.money import CENT
from cnop.market.prices import PriceBook
from cnop.services.alpaca import render
from cnop.services.alpaca.ids import account_uuid, asset_uuid
from cnop.services.alpaca.schemas import Account, Position, text, usd
from cnop.services.alpaca.symbols import candidates, compact
from cnop.services.dependencies import AppClock, Assets, Balances, Holdings, Prices

DAY = timedelta(days=1)


class PositionNotFound(NotFound):
    code = "position_not_found"
    title = "Position does not exist"


async def find_asset(assets: AssetDAO, symbol: str) -> Asset | None:
    """The asset a symbol names in any accepted form (`BTC/USD`, `BTCUSD`, `BTC`)."""
    for asset_id in candidates(symbol):
        asset = await assets.find_asset(asset_id)
        if asset is not None:
            return asset
    return None


def _value(quantity: Decimal, price: Decimal) -> Decimal:
    return (quantity * price).quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class AlpacaReads:
    """The account, positions and assets in Alpaca's shapes, from the DAOs and the price book."""

    assets: AssetDAO
    holdings_dao: HoldingDAO
    balances: BalanceDAO
    prices: PriceBook
    clock: Clock

    async def find_asset(self, symbol: str) -> Asset | None:
        return await find_asset(self.assets, symbol)

    async def asset_by_symbol_or_id(self, symbol_or_id: str) -> Asset:
        """An asset by symbol, or by the UUID this adapter gives it."""
        asset = await self.find_asset(symbol_or_id)
        if asset is not None:
            return asset
        wanted = symbol_or_id.strip().lower()
        for candidate in await self.assets.all_assets():
            if asset_uuid(candidate.asset_id) == wanted:
                return candidate
        raise NotFound(f"asset not found for {symbol_or_id}")

    def position(self, holding: Holding) -> Position:
        tick = self.prices.current(holding.asset_id)
        stats = self.prices.stats(holding.asset_id)
        quantity = holding.quantity
        average = (holding.cost_basis / quantity).quantize(Decimal("0.00000001"), rounding=ROUND_HALF_EVEN)
        price = tick.price if tick is not None else None
        value = _value(quantity, price) if price is not None else None
        pl = value - holding.cost_basis if value is not None else None
        lastday = price - stats.price_change_24h if price is not None and stats is not None else None
        intraday = _value(quantity, price - lastday) if price is not None and lastday is not None else None
        return Position(
            asset_id=asset_uuid(holding.asset_id),
            symbol=compact(holding.asset_id),
            avg_entry_price=text(average) or "0",
            qty=text(quantity) or "0",
            qty_available=text(holding.available) or "0",
            market_value=usd(value),
            cost_basis=usd(holding.cost_basis) or "0",
            unrealized_pl=usd(pl),
            unrealized_plpc=render.ratio(pl, holding.cost_basis) if pl is not None else None,
            unrealized_intraday_pl=usd(intraday),
            unrealized_intraday_plpc=render.ratio(intraday, value - intraday)
            if intraday is not None and value is not None
            else None,
            current_price=text(price),
            lastday_price=text(lastday),
            change_today=render.ratio(price - lastday, lastday) if price is not None and lastday is not None else None,
        )

    async def holdings(self, username: str) -> list[Holding]:
        """The user's open positions: holdings with units, by symbol (as Alpaca lists them)."""
        found = [h for h in await self.holdings_dao.get_holdings(username) if h.quantity > 0]
        return sorted(found, key=lambda h: h.asset_id)

    async def holding_of(self, username: str, symbol: str) -> tuple[Asset, Holding]:
        asset = await self.find_asset(symbol)
        if asset is None:
            raise PositionNotFound(f"position does not exist: {symbol}")
        holding = await self.holdings_dao.get_holding(username, asset.asset_id)
        if holding is None or holding.quantity <= 0:
            raise PositionNotFound(f"position does not exist: {symbol}")
        return asset, holding

    async def account(self, user: User) -> Account:
        balance = await self.balances.get_balance(user.username)
        long_value = Decimal("0.00")
        for holding in await self.holdings(user.username):
            tick = self.prices.current(holding.asset_id)
            if tick is not None:
                long_value += _value(holding.quantity, tick.price)
        equity = balance.current_balance + long_value
        buying_power = usd(balance.available) or "0.00"
        return Account(
            id=account_uuid(user.username),
            account_number=user.username,
            buying_power=buying_power,
            regt_buying_power=buying_power,
            non_marginable_buying_power=buying_power,
            cash=usd(balance.current_balance) or "0.00",
            portfolio_value=usd(equity) or "0.00",
            equity=usd(equity) or "0.00",
            # No end-of-day snapshots are kept: yesterday's equity is not known, so it reads as today's.
            last_equity=usd(equity) or "0.00",
            long_market_value=usd(long_value) or "0.00",
            created_at=user.created_at,
            balance_asof=self.clock.now().date().isoformat(),
        )


async def alpaca_reads(
    assets: Assets, holdings: Holdings, balances: Balances, prices: Prices, clock: AppClock
) -> AlpacaReads:
    return AlpacaReads(assets, holdings, balances, prices, clock)


Reads = Annotated[AlpacaReads, Depends(alpaca_reads)]
