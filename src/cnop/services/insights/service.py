"""Portfolio insights: a deterministic rule set over the portfolio and recent orders.

Same portfolio, same orders, same prices -> the same text. No outside service is needed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from pydantic import BaseModel

from cnop.common.clock import Clock
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.entities.order import OrderSide, OrderStatus
from cnop.common.money import CENT, MONEY_CONTEXT, or_none
from cnop.services.user.portfolio import Portfolio, PortfolioService

MODEL = "cnop-rules-v1"
CONCENTRATED_SHARE = Decimal(50)
HIGH_CASH_SHARE = Decimal(80)
LOW_CASH_SHARE = Decimal(5)


class Insight(BaseModel):
    summary: str
    generated_at: datetime
    model: str
    highlights: list[str]


class InsightEnvelope(BaseModel):
    data: Insight


def _usd(value: Decimal) -> str:
    rounded = or_none(lambda: value.quantize(CENT, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT))
    return f"{rounded:,} USD" if rounded is not None else f"{value:.6E} USD"


def _pct(value: Decimal) -> str:
    rounded = or_none(lambda: value.quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT))
    return f"{rounded}%" if rounded is not None else f"{value:.6E}%"


class InsightsService:
    def __init__(self, portfolios: PortfolioService, orders: OrderDAO, clock: Clock) -> None:
        self.portfolios = portfolios
        self.orders = orders
        self.clock = clock

    async def portfolio_insight(self, username: str) -> Insight:
        portfolio = await self.portfolios.portfolio(username)
        recent = await self.orders.get_orders_by_user(username, limit=50)
        week_ago = self.clock.now() - timedelta(days=7)
        orders = recent.items
        filled_this_week = [o for o in orders if o.status is OrderStatus.COMPLETED and o.created_at >= week_ago]
        open_orders = [o for o in orders if not o.status.is_final]
        highlights = self._highlights(portfolio)
        if filled_this_week:
            buys = sum(1 for o in filled_this_week if o.side is OrderSide.BUY)
            sells = len(filled_this_week) - buys
            highlights.append(f"In the last 7 days you completed {buys} buy and {sells} sell orders.")
        else:
            highlights.append("You have not traded in the last 7 days.")
        if open_orders:
            highlights.append(f"You have {len(open_orders)} open orders waiting for their price.")
        return Insight(
            summary=self._summary(portfolio),
            generated_at=self.clock.now(),
            model=MODEL,
            highlights=highlights,
        )

    @staticmethod
    def _summary(portfolio: Portfolio) -> str:
        if not portfolio.assets and portfolio.total_value == 0:
            return (
                "Your portfolio is empty. Deposit USD, then buy an asset at market price or place a limit "
                "order; insights on allocation, concentration and profit and loss appear once you hold something."
            )
        if not portfolio.assets:
            return (
                f"Your portfolio is {_usd(portfolio.total_value)}, all in cash. Buying one or more assets "
                "would put it to work; spreading across several limits the risk of any one."
            )
        pnl = sum((a.unrealized_pnl or Decimal(0) for a in portfolio.assets), Decimal(0))
        direction = "up" if pnl > 0 else "down" if pnl < 0 else "flat"
        top = portfolio.assets[0]
        return (
            f"Your portfolio is worth {_usd(portfolio.total_value)} across {len(portfolio.assets)} assets and cash. "
            f"Open positions are {direction} {_usd(abs(pnl))} against what you paid; "
            f"{top.asset_name} is your largest position at {_pct(top.percentage or Decimal(0))}."
        )

    @staticmethod
    def _highlights(portfolio: Portfolio) -> list[str]:
        notes: list[str] = []
        total = portfolio.total_value
        if total <= 0:
            return notes
        cash_share = portfolio.cash.total / total * 100
        if cash_share >= HIGH_CASH_SHARE:
            notes.append(f"Cash is {_pct(cash_share)} of your portfolio: most of it is not invested.")
        elif cash_share <= LOW_CASH_SHARE and portfolio.assets:
            notes.append(
                f"Cash is only {_pct(cash_share)} of your portfolio: little is left to buy dips or cover orders."
            )
        else:
            notes.append(f"Cash is {_pct(cash_share)} of your portfolio.")
        if not portfolio.assets:
            return notes
        top = portfolio.assets[0]
        if top.percentage is not None and top.percentage >= CONCENTRATED_SHARE:
            notes.append(
                f"{top.asset_name} makes up {_pct(top.percentage)} of your portfolio: a concentrated position."
            )
        shares = [(a.percentage or Decimal(0)) / 100 for a in portfolio.assets]
        hhi = sum((s * s for s in shares), Decimal(0))
        if len(portfolio.assets) > 1:
            equivalent = or_none(lambda: (1 / hhi).quantize(Decimal("0.1"))) if hhi else 0
            notes.append(
                f"Your holdings behave like {equivalent} equally weighted positions (of {len(portfolio.assets)} held)."
            )
        priced = [a for a in portfolio.assets if a.unrealized_pnl is not None and a.cost_basis > 0]
        if priced:
            best = max(priced, key=lambda a: (a.unrealized_pnl or Decimal(0)) / a.cost_basis)
            worst = min(priced, key=lambda a: (a.unrealized_pnl or Decimal(0)) / a.cost_basis)
            best_pct = (best.unrealized_pnl or Decimal(0)) / best.cost_basis * 100
            notes.append(
                f"Best performer: {best.asset_name} at {_pct(best_pct)} ({_usd(best.unrealized_pnl or Decimal(0))})."
            )
            if worst.asset_id != best.asset_id:
                worst_pnl = worst.unrealized_pnl or Decimal(0)
                worst_pct = worst_pnl / worst.cost_basis * 100
                notes.append(f"Weakest performer: {worst.asset_name} at {_pct(worst_pct)} ({_usd(worst_pnl)}).")
        return notes
