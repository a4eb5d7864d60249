"""Settlement: the legs of every trade, built in one place (docs/decisions/0017-order-settlement.md).

A trade is one store transaction made of named legs:

    order        the order's own write (created filled, or a queued order closed as filled)
    ledger       the cash entries (payment or proceeds, and a refund of an unused reservation)
    balance      the cash balance, guarded so neither available nor held goes below zero
    holding      the user's units and their cost basis, guarded likewise (and, for a sell, on
                 the version read, so the cost basis leaving is the one computed)
    asset_transaction   the record of the units that moved
    house        the house inventory's side, on one of the asset's inventory shards (the next in
                 turn), guarded so it never hands out units it lacks; when the shard
                 lacks them the leg is rebuilt from what the shards hold (decision 0025)
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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.database.store import ItemStore, Op
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.holding import AssetTransaction
from cnop.common.entities.order import Order, OrderSide, OrderStatus
from cnop.common.exceptions import ConditionFailed, StoreError, TransactionConflict
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


@dataclass(frozen=True, slots=True)
class HouseChange:
    asset_id: str
    quantity: Decimal
    cash: Decimal


class Leg(StrEnum):
    ORDER = "order"
    LEDGER = "ledger"
    BALANCE = "balance"
    HOLDING = "holding"
    ASSET_TRANSACTION = "asset_transaction"
    HOUSE = "house"
    IDEMPOTENCY = "idempotency"


class GuardFailed(ConditionFailed):
    """A leg's condition did not hold: `leg` names it, `index` is its op's place in the transaction."""

    def __init__(self, leg: Leg, index: int) -> None:
        self.leg = leg
        super().__init__(index, f"the {leg.value} leg's condition failed")


class UnitsMissing(Exception):
    """A sell found fewer units (available, or held for a resting sell) than it sells."""

    def __init__(self, have: Decimal) -> None:
        self.have = have
        super().__init__(f"only {have} units")


class Legs:
    """The ops of one transaction, each named by the leg it belongs to."""

    __slots__ = ("house", "names", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.names: list[Leg] = []
        self.house: HouseChange | None = None

    def add(self, leg: Leg, *ops: Op) -> Legs:
        self.ops.extend(ops)
        self.names.extend(leg for _ in ops)
        return self

    def leg_at(self, index: int) -> Leg:
        return self.names[index]

    def with_house(self, ops: list[Op]) -> Legs:
        """The same legs with the house leg's ops replaced by `ops` (in the same place)."""
        rebuilt = Legs()
        rebuilt.house = self.house
        placed = False
        for leg, op in zip(self.names, self.ops, strict=True):
            if leg is not Leg.HOUSE:
                rebuilt.add(leg, op)
            elif not placed:
                rebuilt.add(Leg.HOUSE, *ops)
                placed = True
        return rebuilt

    async def commit(self, store: ItemStore) -> None:
        """Apply every leg at once; a failed condition raises `GuardFailed` naming its leg."""
        try:
            await store.transact(self.ops)
        except ConditionFailed as exc:
            if not 0 <= exc.index < len(self.names):
                raise
            raise GuardFailed(self.leg_at(exc.index), exc.index) from exc


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

    def _house_leg(self, legs: Legs, order: Order, quantity: Decimal, cash: Decimal) -> Legs:
        legs.house = HouseChange(order.asset_id, quantity, cash)
        return legs.add(Leg.HOUSE, *self.house.trade_ops(order.asset_id, quantity, cash))

    async def _commit(self, legs: Legs) -> None:
        """Commit; when the house leg's shard lacks the units (or does not exist), rebuild the
        leg from what the asset's shards hold and try again, and refuse (`GuardFailed` of the
        house leg) only when the house as a whole lacks them. When the store gave up on a
        conflict (a cancelled transaction: nothing applied), try the next shard, if there is one."""
        for attempt in range(HOUSE_ATTEMPTS):
            last = attempt == HOUSE_ATTEMPTS - 1
            change = legs.house
            try:
                await legs.commit(self.store)
                return
            except GuardFailed as failed:
                if failed.leg is not Leg.HOUSE or change is None or last:
                    raise
                cover = await self.house.cover_ops(change.asset_id, change.quantity, change.cash)
                if cover is None:
                    raise
                legs = legs.with_house(cover)
            except TransactionConflict:
                if change is None or last or self.house.shards == 1:
                    raise
                legs = legs.with_house(self.house.trade_ops(change.asset_id, change.quantity, change.cash))

    def _cash_legs(self, legs: Legs, *entries: BalanceTransaction) -> Legs:
        ops = self.balances.entry_ops(*entries)
        return legs.add(Leg.LEDGER, *ops[:-1]).add(Leg.BALANCE, ops[-1])

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

    def hold_legs(self, order: Order, order_op: Op) -> Legs:
        """A resting order's reservation moves from available to held: cash for a buy (an
        ORDER_HOLD entry), units for a sell (a `hold` asset transaction)."""
        now, held = order.created_at, order.held_amount
        legs = Legs().add(Leg.ORDER, order_op)
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
            return self._cash_legs(legs, entry)
        legs.add(Leg.HOLDING, self.holdings.change_op(order.username, order.asset_id, now, available=-held, held=held))
        return legs.add(Leg.ASSET_TRANSACTION, self._asset_transaction(order, "hold", now, available=-held, held=held))

    def release_legs(self, order: Order, order_op: Op, status: OrderStatus, now: datetime) -> Legs:
        """A resting order that ends without a fill gives its reservation back (ORDER_RELEASE
        for cash, a `release` asset transaction for units)."""
        held = order.held_amount
        legs = Legs().add(Leg.ORDER, order_op)
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
            return self._cash_legs(legs, entry)
        legs.add(Leg.HOLDING, self.holdings.change_op(order.username, order.asset_id, now, available=held, held=-held))
        return legs.add(
            Leg.ASSET_TRANSACTION, self._asset_transaction(order, "release", now, available=held, held=-held)
        )

    def buy_legs(self, order: Order, order_op: Op, *, held: Decimal = ZERO, note: str = "") -> Legs:
        """`order` is the order as filled (executed price, total cost, executed at); `held` the
        reservation the cost is paid from first (a resting buy), any excess from available cash."""
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
        legs = self._cash_legs(Legs().add(Leg.ORDER, order_op), *entries)
        legs.add(
            Leg.HOLDING,
            self.holdings.change_op(order.username, order.asset_id, now, available=order.quantity, cost_basis=cost),
        )
        legs.add(
            Leg.ASSET_TRANSACTION,
            self._asset_transaction(order, "buy", now, available=order.quantity, held=ZERO, price=price, total=cost),
        )
        return self._house_leg(legs, order, -order.quantity, cost)

    def sell_legs(
        self,
        order: Order,
        order_op: Op,
        *,
        basis_out: Decimal,
        from_held: bool,
        expected_version: Decimal | None,
        note: str = "",
    ) -> Legs:
        """`order` is the order as filled; the units leave available (a market sell) or held (a
        resting sell's reservation), with `basis_out` of the cost basis."""
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
        legs = self._cash_legs(Legs().add(Leg.ORDER, order_op), entry)
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
        return self._house_leg(legs, order, order.quantity, -proceeds)

    # --- settling -----------------------------------------------------------------------------

    async def settle_buy(self, order: Order, order_op: Op, *, held: Decimal = ZERO, note: str = "") -> Order:
        """Apply a buy's legs at once; raises `GuardFailed` naming the leg that refused."""
        legs = idempotency_leg(self.buy_legs(order, order_op, held=held, note=note), order.order_id)
        await self._commit(legs)
        return order

    async def settle_sell(
        self,
        username: str,
        asset_id: str,
        quantity: Decimal,
        filled: Callable[[Decimal], tuple[Order, Op]],
        *,
        from_held: bool,
        note: str = "",
    ) -> Order:
        """Read the holding, take `quantity` units out at its average cost, apply at once.

        `filled(basis_out)` gives the order as filled and its own op for that cost basis (it is
        called again on every attempt). Raises `UnitsMissing` when the units are not there,
        `GuardFailed` for a leg other than the holding, and retries the holding's per the policy
        above.
        """
        for attempt in range(SELL_ATTEMPTS):
            holding = await self.holdings.get_holding(username, asset_id)
            have = ZERO if holding is None else (holding.held if from_held else holding.available)
            if holding is None or have < quantity:
                raise UnitsMissing(have)
            basis_out = cost_basis_out(holding.available + holding.held, holding.cost_basis, quantity)
            order, order_op = filled(basis_out)
            legs = self.sell_legs(
                order,
                order_op,
                basis_out=basis_out,
                from_held=from_held,
                expected_version=holding.version if attempt < EXACT_COST_BASIS_ATTEMPTS else None,
                note=note,
            )
            try:
                await self._commit(idempotency_leg(legs, order.order_id))
            except GuardFailed as failed:
                if failed.leg is Leg.HOLDING:
                    continue  # the holding changed since we read it: read again
                raise
            return order
        raise StoreError("the holding kept changing; sell not applied")
