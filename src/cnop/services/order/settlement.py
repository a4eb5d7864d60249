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
position. How a sell takes out its cost basis (in the transaction where the engine allows it,
else read and retry: `SELL_ATTEMPTS`) lives here and nowhere else (docs/decisions/0024-sells.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.database.store import Item, ItemStore, Op, PlannedTransactions
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.holding import AssetTransaction, Holding
from cnop.common.entities.order import Order, OrderSide, OrderStatus
from cnop.common.exceptions import ConditionFailed, StoreError, TransactionConflict
from cnop.common.idempotency import applying_mark
from cnop.common.ids import new_id
from cnop.services.order.rules import cost_basis_out, fund_buy

ZERO = Decimal(0)
NO_CASH = Decimal("0.00")

# A sell takes `quantity` units out at the holding's average cost, always computed from the
# holding it applies to. On an engine with planned transactions (SQLite) that happens inside the
# transaction that writes it: no read before, never a retry. Elsewhere (DynamoDB) the sell reads
# the holding (or takes the one this process's previous sell of it left), then applies guarded on
# its version; when another trade changed the holding meanwhile it tries again from the holding
# the failure returned (no second read), at most `SELL_ATTEMPTS` times (then a 503: the holding
# kept changing). Only other processes' trades and buys of the same holding can make it retry.
SELL_ATTEMPTS = 32

T = TypeVar("T")

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


def at_once(step: Awaitable[T]) -> T:
    """The result of a leg builder that only adds ops to its `Legs` (a DAO write with `tx=`),
    run to its end here and now: a plan runs on the store's thread, where nothing can be awaited."""
    assert isinstance(step, Coroutine)
    coroutine: Coroutine[Any, Any, T] = step
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a leg builder waited for something inside a planned transaction")


class Settlement:
    def __init__(
        self,
        store: ItemStore,
        balances: BalanceDAO,
        holdings: HoldingDAO,
        house: House,
        *,
        planned_sells: bool = True,
    ) -> None:
        """`planned_sells=False` makes sells read and retry even where the engine could plan
        them (for measurements and tests of that path)."""
        self.store = store
        self.balances = balances
        self.holdings = holdings
        self.house = house
        self.planner = store if planned_sells and isinstance(store, PlannedTransactions) else None
        self._sell_chain: dict[tuple[str, str], asyncio.Future[Holding | None]] = {}

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
                if failed.leg is not Leg.HOUSE:
                    raise
                cover = await self.house.cover_ops(asset_id, quantity, cash)
                if cover is None:
                    raise
                if last:  # the house has the units, but other trades kept taking them first
                    raise TransactionConflict("the house shards kept changing under this trade") from failed
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
        """Take `quantity` units out of the holding at its average cost, all legs at once.

        `filled(basis_out, legs)` gives the order as filled for that cost basis, its own write
        added to `legs` (it is called again, with fresh legs, on every attempt; on a planning
        engine inside the transaction, so it must only add to `legs`). Raises `UnitsMissing` when
        the units are not there, `GuardFailed` for a leg other than the holding, and retries the
        holding's per the policy above.
        """
        if self.planner is not None:
            return await self._settle_sell_planned(self.planner, username, asset_id, quantity, filled, from_held, note)
        # This process's sells of one holding follow each other: each starts from the holding the
        # one before it left (known exactly when that one committed), so they never race each
        # other. Not a lock: nothing relies on it for correctness (the version guard does), and
        # a sell whose predecessor ends otherwise simply reads the holding.
        chain, loop = (username, asset_id), asyncio.get_running_loop()
        before = self._sell_chain.get(chain)
        if before is not None and before.get_loop() is not loop:
            before = None  # another event loop's sell (tests): not one to follow
        mine: asyncio.Future[Holding | None] = loop.create_future()
        self._sell_chain[chain] = mine
        after: Holding | None = None
        try:
            holding = await asyncio.shield(before) if before is not None else None
            if holding is None:
                holding = await self.holdings.get_holding(username, asset_id)
            order, after = await self._settle_sell_read(holding, quantity, filled, from_held, note)
            return order
        finally:
            if not mine.done():
                mine.set_result(after)
            if self._sell_chain.get(chain) is mine:
                del self._sell_chain[chain]

    async def _settle_sell_read(
        self,
        holding: Holding | None,
        quantity: Decimal,
        filled: Callable[[Decimal, Legs], Awaitable[Order]],
        from_held: bool,
        note: str,
    ) -> tuple[Order, Holding]:
        """Apply the sell on `holding` as read, guarded on its version; on a change, again from
        the holding the failure saw. Returns the order and the holding as the sell left it."""
        for _ in range(SELL_ATTEMPTS):
            basis_out = self._basis_out(holding, quantity, from_held)
            assert holding is not None
            legs = Legs()
            order = await filled(basis_out, legs)
            await self.sell_legs(
                order, legs, basis_out=basis_out, from_held=from_held, expected_version=holding.version, note=note
            )
            try:
                assert order.total_amount is not None
                change = (order.asset_id, order.quantity, -order.total_amount)
                await self._commit(idempotency_leg(legs, order.order_id), *change)
            except GuardFailed as failed:
                if failed.leg is not Leg.HOLDING:
                    raise
                # The holding changed since it was read: go on from the one the failure saw.
                if failed.item is not None:
                    holding = self.holdings.from_item(failed.item)
                else:
                    holding = await self.holdings.get_holding(holding.username, holding.asset_id)
                continue
            moved = "held" if from_held else "available"
            left = holding.model_copy(
                update={
                    moved: getattr(holding, moved) - order.quantity,
                    "cost_basis": holding.cost_basis - basis_out,
                    "version": holding.version + 1,
                }
            )
            return order, left
        raise StoreError("the holding kept changing; sell not applied")

    @staticmethod
    def _basis_out(holding: Holding | None, quantity: Decimal, from_held: bool) -> Decimal:
        """The cost basis `quantity` units take out of `holding` (`UnitsMissing` if it lacks them)."""
        have = ZERO if holding is None else (holding.held if from_held else holding.available)
        if holding is None or have < quantity:
            raise UnitsMissing(have)
        return cost_basis_out(holding.available + holding.held, holding.cost_basis, quantity)

    async def _settle_sell_planned(
        self,
        planner: PlannedTransactions,
        username: str,
        asset_id: str,
        quantity: Decimal,
        filled: Callable[[Decimal, Legs], Awaitable[Order]],
        from_held: bool,
        note: str,
    ) -> Order:
        """The sell built inside its own transaction from the holding as it is there: no read
        before, no version to insist on, no retry."""
        mark = applying_mark()  # read here: the plan runs on the store's thread, outside this context
        built: list[tuple[Order, Legs]] = []
        house: list[Op] | None = None  # the house leg rebuilt from what the shards hold (see `_commit`)

        def plan(item: Item | None) -> list[Op]:
            basis_out = self._basis_out(self.holdings.from_item(item), quantity, from_held)
            legs = Legs()
            order = at_once(filled(basis_out, legs))
            at_once(
                self.sell_legs(order, legs, basis_out=basis_out, from_held=from_held, expected_version=None, note=note)
            )
            if house is not None:
                legs = with_house(legs, house)
            if mark is not None:
                legs.add(Leg.IDEMPOTENCY, mark(order.order_id))
            built.append((order, legs))
            return legs.ops

        table, key = self.holdings.holding_ref(username, asset_id)
        for _ in range(HOUSE_ATTEMPTS):
            try:
                await planner.transact_planned(table, key, plan)
            except ConditionFailed as exc:
                failed = built[-1][1].failure(exc)
                order = built[-1][0]
                house_failed = isinstance(failed, GuardFailed) and failed.leg is Leg.HOUSE
                if not house_failed or order.total_amount is None:
                    raise failed from exc
                house = await self.house.cover_ops(asset_id, order.quantity, -order.total_amount)
                if house is None:
                    raise failed from exc
                continue
            return built[-1][0]
        raise TransactionConflict("the house shards kept changing under this sell; not applied")
