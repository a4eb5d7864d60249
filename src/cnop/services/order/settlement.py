"""Settlement: the legs of every trade, built in one place (docs/decisions/0017-order-settlement.md).

A trade is one store transaction made of named legs:

    order        the order's own write (created filled, or a queued order closed as filled)
    ledger       the cash entries (payment or proceeds, and a refund of an unused reservation)
    balance      the cash balance, guarded so neither available nor held goes below zero
    holding      the user's units and their cost basis, guarded likewise (and, for a sell, on
                 the version read, so the cost basis leaving is the one computed)
    asset_transaction   the record of the units that moved
    house        the house inventory's side, on one of the asset's inventory shards (the next in
                 turn), guarded so it never hands out units it lacks; when the shard lacks
                 them the leg is rebuilt from what the shards hold (decision 0025)
    idempotency  the client's idempotency record, marked applied (when there is one)

The reservation of a resting order (`hold_legs`) and its return when the order ends without a
fill (`release_legs`) are built here too, so every movement of an order's cash or units is.
Market buys and sells, marketable limit orders, trigger fills and the fill of a converted
stop-limit all come through `settle_buy` / `settle_sell`. A failed condition comes back as
`GuardFailed(leg=...)`, so callers map it to a domain error by the leg's name, never by an op's
position. The sell's cost-basis retry policy (`SELL_ATTEMPTS`, `EXACT_COST_BASIS_ATTEMPTS`)
lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.database.store import ItemStore, Op
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.holding import AssetTransaction
from cnop.common.entities.order import Order, OrderSide, OrderStatus
from cnop.common.exceptions import StoreError, TransactionConflict
from cnop.common.idempotency import applying_mark
from cnop.common.ids import new_id
from cnop.services.order.rules import cost_basis_out, fund_buy

ZERO = Decimal(0)
NO_CASH = Decimal("0.00")

# A sell reads the holding, then applies under guards; a guard on the holding that fails because
# another order changed it meanwhile means read again. The first attempts insist on the exact
# holding read (same version), so the cost basis leaving is exact; after that the sell settles
# for the guards alone, so it always makes progress: money stays exact, and only the
# informational cost basis may then lag by the interleaved trade.
SELL_ATTEMPTS = 32
EXACT_COST_BASIS_ATTEMPTS = 4

# How often a trade's house leg is rebuilt before the trade gives up: from a fresh read of the
# shards when its shard lacks the units (other trades may take the units found meanwhile), or on
# the next shard when the store gave up on a conflict (another trade kept its shard busy).
HOUSE_ATTEMPTS = 4


class House(Protocol):
    """The house inventory's side of a trade (`cnop.common.dao.house_dao.HouseInventory`):
    `quantity` units and `cash` to the house (negative: from it), on one of the asset's `shards`
    (`trade_ops`, no read), or from what the shards hold (`cover_ops`; None: the house lacks them)."""

    shards: int

    def trade_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op]: ...

    async def cover_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op] | None: ...


def with_house(legs: Legs, ops: list[Op]) -> Legs:
    """The same legs with the house leg's ops replaced by `ops` (in the same place)."""
    rebuilt, placed = Legs(), False
    for leg, op in zip(legs.names, legs.ops, strict=True):
        if leg is not Leg.HOUSE:
            rebuilt.add(leg, op)
        elif not placed:
            rebuilt.add(Leg.HOUSE, *ops)
            placed = True
    return rebuilt


class UnitsMissing(Exception):
    """A sell found fewer units (available, or held for a resting sell) than it sells."""

    def __init__(self, have: Decimal) -> None:
        self.have = have
        super().__init__(f"only {have} units")


def idempotency_leg(legs: Legs, result_id: str) -> Legs:
    """The client's idempotency record marked applied with `result_id`, when the use case runs
    under an idempotency key (`cnop.services.idempotent`)."""
    mark = applying_mark()
    return legs if mark is None else legs.add(Leg.IDEMPOTENCY, mark(result_id))


class Settlement:
    def __init__(self, store: ItemStore, balances: BalanceDAO, holdings: HoldingDAO, house: House) -> None:
        self.store = store
        self.balances = balances
        self.holdings = holdings
        self.house = house

    # --- the legs -----------------------------------------------------------------------------

    async def _commit(self, legs: Legs, asset_id: str, quantity: Decimal, cash: Decimal) -> None:
        """Commit a trade whose house leg moves `quantity` units and `cash` to the house. When the
        leg's shard lacks the units (or does not exist), rebuild the leg from what the asset's
        shards hold and try again, and refuse (`GuardFailed` of the house leg) only when the house
        as a whole lacks them. When the store gave up on a conflict (a cancelled transaction:
        nothing applied), try the next shard, if there is one."""
        for attempt in range(HOUSE_ATTEMPTS):
            last = attempt == HOUSE_ATTEMPTS - 1
            try:
                await legs.commit(self.store)
                return
            except GuardFailed as failed:
                if failed.leg is not Leg.HOUSE or last:
                    raise
                cover = await self.house.cover_ops(asset_id, quantity, cash)
                if cover is None:
                    raise
                legs = with_house(legs, cover)
            except TransactionConflict:
                if last or self.house.shards == 1:
                    raise
                legs = with_house(legs, self.house.trade_ops(asset_id, quantity, cash))

    async def _cash_legs(self, legs: Legs, *entries: BalanceTransaction) -> Legs:
        await self.balances.create_transaction(*entries, tx=legs)
        return legs

    def _asset_transaction(
        self,
        order: Order,
        kind: str,
        now: datetime,
        *,
        available: Decimal,
        held: Decimal,
        price: Decimal | None = None,
        total: Decimal | None = None,
    ) -> Op:
        return self.holdings.asset_transaction_op(
            AssetTransaction(
                transaction_id=new_id(),
                username=order.username,
                asset_id=order.asset_id,
                transaction_type=kind,
                quantity=order.quantity,
                available_change=available,
                held_change=held,
                price=price,
                total=total,
                order_id=order.order_id,
                created_at=now,
            )
        )

    async def hold_legs(self, order: Order, legs: Legs) -> Legs:
        """A resting order's reservation moves from available to held: cash for a buy (an
        ORDER_HOLD entry), units for a sell (a `hold` asset transaction). `legs` holds the
        order's own write already (`OrderDAO.create_order(..., tx=legs)`)."""
        now, held = order.created_at, order.held_amount
        if order.side is OrderSide.BUY:
            entry = BalanceTransaction(
                transaction_id=new_id(),
                username=order.username,
                transaction_type=TransactionType.ORDER_HOLD,
                amount=held,
                available_change=-held,
                held_change=held,
                description=f"Reserved for {order.order_type.value} {order.quantity} {order.asset_id}",
                order_id=order.order_id,
                created_at=now,
            )
            return await self._cash_legs(legs, entry)
        legs.add(Leg.HOLDING, self.holdings.change_op(order.username, order.asset_id, now, available=-held, held=held))
        return legs.add(Leg.ASSET_TRANSACTION, self._asset_transaction(order, "hold", now, available=-held, held=held))

    async def release_legs(self, order: Order, legs: Legs, status: OrderStatus, now: datetime) -> Legs:
        """A resting order that ends without a fill gives its reservation back (ORDER_RELEASE
        for cash, a `release` asset transaction for units). `legs` holds the order's status
        change already (`OrderDAO.update_order_status(..., tx=legs)`)."""
        held = order.held_amount
        if order.side is OrderSide.BUY:
            if held <= 0:
                return legs
            entry = BalanceTransaction(
                transaction_id=new_id(),
                username=order.username,
                transaction_type=TransactionType.ORDER_RELEASE,
                amount=held,
                available_change=held,
                held_change=-held,
                description=f"Released reservation of {order.order_type.value} ({status.value})",
                order_id=order.order_id,
                created_at=now,
            )
            return await self._cash_legs(legs, entry)
        legs.add(Leg.HOLDING, self.holdings.change_op(order.username, order.asset_id, now, available=held, held=-held))
        return legs.add(
            Leg.ASSET_TRANSACTION, self._asset_transaction(order, "release", now, available=held, held=-held)
        )

    async def buy_legs(self, order: Order, legs: Legs, *, held: Decimal = ZERO, note: str = "") -> Legs:
        """`order` is the order as filled (executed price, total cost, executed at), its own write
        in `legs` already; `held` the reservation the cost is paid from first (a resting buy),
        any excess from available cash."""
        assert order.executed_price is not None
        assert order.total_amount is not None
        assert order.executed_at is not None
        price, cost, now = order.executed_price, order.total_amount, order.executed_at
        funding = fund_buy(cost, held)
        entries = [
            BalanceTransaction(
                transaction_id=new_id(),
                username=order.username,
                transaction_type=TransactionType.ORDER_PAYMENT,
                amount=cost,
                available_change=-funding.from_available,
                held_change=-funding.from_held if held else NO_CASH,
                description=f"Bought {order.quantity} {order.asset_id} at {price} USD{note}",
                order_id=order.order_id,
                created_at=now,
            )
        ]
        if funding.refund > 0:
            entries.append(
                BalanceTransaction(
                    transaction_id=new_id(),
                    username=order.username,
                    transaction_type=TransactionType.ORDER_REFUND,
                    amount=funding.refund,
                    available_change=funding.refund,
                    held_change=-funding.refund,
                    description="Refund of the unused reservation",
                    order_id=order.order_id,
                    created_at=now,
                )
            )
        await self._cash_legs(legs, *entries)
        legs.add(
            Leg.HOLDING,
            self.holdings.change_op(order.username, order.asset_id, now, available=order.quantity, cost_basis=cost),
        )
        legs.add(
            Leg.ASSET_TRANSACTION,
            self._asset_transaction(order, "buy", now, available=order.quantity, held=ZERO, price=price, total=cost),
        )
        return legs.add(Leg.HOUSE, *self.house.trade_ops(order.asset_id, -order.quantity, cost))

    async def sell_legs(
        self,
        order: Order,
        legs: Legs,
        *,
        basis_out: Decimal,
        from_held: bool,
        expected_version: Decimal | None,
        note: str = "",
    ) -> Legs:
        """`order` is the order as filled, its own write in `legs` already; the units leave
        available (a market sell) or held (a resting sell's reservation), with `basis_out` of the
        cost basis."""
        assert order.executed_price is not None
        assert order.total_amount is not None
        assert order.executed_at is not None
        price, proceeds, now = order.executed_price, order.total_amount, order.executed_at
        entry = BalanceTransaction(
            transaction_id=new_id(),
            username=order.username,
            transaction_type=TransactionType.ORDER_PROCEEDS,
            amount=proceeds,
            available_change=proceeds,
            held_change=NO_CASH,
            description=f"Sold {order.quantity} {order.asset_id} at {price} USD{note}",
            order_id=order.order_id,
            created_at=now,
        )
        units = -order.quantity
        available, held = (ZERO, units) if from_held else (units, ZERO)
        await self._cash_legs(legs, entry)
        legs.add(
            Leg.HOLDING,
            self.holdings.change_op(
                order.username,
                order.asset_id,
                now,
                available=available,
                held=held,
                cost_basis=-basis_out,
                expected_version=expected_version,
            ),
        )
        legs.add(
            Leg.ASSET_TRANSACTION,
            self._asset_transaction(order, "sell", now, available=available, held=held, price=price, total=proceeds),
        )
        return legs.add(Leg.HOUSE, *self.house.trade_ops(order.asset_id, order.quantity, -proceeds))

    # --- settling -----------------------------------------------------------------------------

    async def settle_buy(self, order: Order, legs: Legs, *, held: Decimal = ZERO, note: str = "") -> Order:
        """Apply a buy's legs at once (`legs` holds the order's own write); raises `GuardFailed`
        naming the leg that refused."""
        await self.buy_legs(order, legs, held=held, note=note)
        assert order.total_amount is not None
        await self._commit(idempotency_leg(legs, order.order_id), order.asset_id, -order.quantity, order.total_amount)
        return order

    async def settle_sell(
        self,
        username: str,
        asset_id: str,
        quantity: Decimal,
        filled: Callable[[Decimal, Legs], Awaitable[Order]],
        *,
        from_held: bool,
        note: str = "",
    ) -> Order:
        """Read the holding, take `quantity` units out at its average cost, apply at once.

        `filled(basis_out, legs)` gives the order as filled for that cost basis, its own write
        added to `legs` (it is called again, with fresh legs, on every attempt). Raises
        `UnitsMissing` when the units are not there, `GuardFailed` for a leg other than the
        holding, and retries the holding's per the policy above.
        """
        for attempt in range(SELL_ATTEMPTS):
            holding = await self.holdings.get_holding(username, asset_id)
            have = ZERO if holding is None else (holding.held if from_held else holding.available)
            if holding is None or have < quantity:
                raise UnitsMissing(have)
            basis_out = cost_basis_out(holding.available + holding.held, holding.cost_basis, quantity)
            legs = Legs()
            order = await filled(basis_out, legs)
            await self.sell_legs(
                order,
                legs,
                basis_out=basis_out,
                from_held=from_held,
                expected_version=holding.version if attempt < EXACT_COST_BASIS_ATTEMPTS else None,
                note=note,
            )
            try:
                assert order.total_amount is not None
                change = (order.asset_id, order.quantity, -order.total_amount)
                await self._commit(idempotency_leg(legs, order.order_id), *change)
            except GuardFailed as failed:
                if failed.leg is Leg.HOLDING:
                    continue  # the holding changed since we read it: read again
                raise
            return order
        raise StoreError("the holding kept changing; sell not applied")
