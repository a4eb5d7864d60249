"""Average cost through interleaved buys, sells, holds and releases: every sequence gives the
numbers of a reference model, on both engines and on both ways a sell is settled (planned in the
transaction, or read then written under a version guard); and many concurrent sells of one
holding lose no update and never take units that are not there (docs/decisions/0024-sells.md).

The reference model is written out here on purpose, not imported: a holding is (available, held,
cost basis); a buy adds its units and its cost; a sell of q out of U units takes the whole cost
basis when q >= U, else cost basis * q / U to the cent, half-even; its realised P&L is proceeds
minus what it took; a hold or release moves units between available and held and leaves the cost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.dao.user_dao import user_to_item
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, NotExists, PlannedTransactions, Put
from cnop.common.database.transaction import GuardFailed, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderStatus, OrderType, OrderUpdate
from cnop.common.entities.user import User
from cnop.common.ids import new_id
from cnop.services.order.placement import resting_index
from cnop.services.order.rules import trigger_of
from cnop.services.order.settlement import Settlement, UnitsMissing
from tests.conftest import StoreFactory
from tests.support.books import assert_audit_passes

D = Decimal
CENT = D("0.01")
ZERO = D(0)
ASSET = "BTC"


# --- the reference model ----------------------------------------------------------------------


@dataclass
class Reference:
    available: Decimal = ZERO
    held: Decimal = ZERO
    cost: Decimal = ZERO
    realised: list[Decimal] = field(default_factory=list)

    def buy(self, quantity: Decimal, cost: Decimal) -> None:
        self.available += quantity
        self.cost += cost

    def sell(self, quantity: Decimal, proceeds: Decimal, from_held: bool) -> bool:
        if (self.held if from_held else self.available) < quantity:
            return False
        units = self.available + self.held
        out = self.cost if quantity >= units else (self.cost * quantity / units).quantize(CENT, ROUND_HALF_EVEN)
        if from_held:
            self.held -= quantity
        else:
            self.available -= quantity
        self.cost -= out
        self.realised.append(proceeds - out)
        return True

    def hold(self, quantity: Decimal) -> bool:
        if self.available < quantity:
            return False
        self.available, self.held = self.available - quantity, self.held + quantity
        return True

    def release(self, quantity: Decimal) -> bool:
        if self.held < quantity:
            return False
        self.available, self.held = self.available + quantity, self.held - quantity
        return True


# --- the system under test --------------------------------------------------------------------


@dataclass
class Books:
    store: ItemStore
    clock: FakeClock
    holdings: HoldingDAO
    orders: OrderDAO
    settlement: Settlement
    username: str
    resting: list[Order] = field(default_factory=list)

    async def buy(self, quantity: Decimal, cost: Decimal) -> None:
        order = self.order(OrderType.MARKET_BUY, quantity, cost)
        legs = Legs()
        await self.orders.create_order(order, tx=legs)
        await self.settlement.settle_buy(order, legs)

    async def market_sell(self, quantity: Decimal, proceeds: Decimal) -> Order | None:
        async def filled(basis_out: Decimal, legs: Legs) -> Order:
            order = self.order(OrderType.MARKET_SELL, quantity, proceeds, realized_pnl=proceeds - basis_out)
            return await self.orders.create_order(order, tx=legs)

        try:
            return await self.settlement.settle_sell(self.username, ASSET, quantity, filled, from_held=False)
        except UnitsMissing:
            return None

    async def hold(self, quantity: Decimal) -> bool:
        """Queue a limit sell of `quantity`: its units move from available to held."""
        order = self.order(OrderType.LIMIT_SELL, quantity, ZERO).model_copy(
            update={
                "status": OrderStatus.QUEUED,
                "price": D("1000000"),
                "held_amount": quantity,
                "executed_price": None,
                "total_amount": None,
                "executed_at": None,
            }
        )
        try:
            legs = Legs()
            await self.orders.create_order(order, resting_index(order), tx=legs)
            await (await self.settlement.hold_legs(order, legs)).commit(self.store)
        except GuardFailed:
            return False
        self.resting.append(order)
        return True

    async def fill(self, proceeds: Decimal) -> Order | None:
        """Fill the oldest resting sell (from its held units), as the trigger engine does."""
        order = self.resting.pop(0)
        now = self.clock.now()

        async def filled(basis_out: Decimal, legs: Legs) -> Order:
            update = OrderUpdate(
                status=OrderStatus.COMPLETED,
                executed_price=D("1000000"),
                total_amount=proceeds,
                realized_pnl=proceeds - basis_out,
                executed_at=now,
                updated_at=now,
            )
            return await self.orders.update_order_status(order, update, trigger_seen=trigger_of(order).price, tx=legs)

        return await self.settlement.settle_sell(
            self.username, ASSET, order.quantity, filled, from_held=True, note=" (limit_sell)"
        )

    async def release(self) -> None:
        """Cancel the oldest resting sell: its units go back to available."""
        order = self.resting.pop(0)
        now = self.clock.now()
        update = OrderUpdate(status=OrderStatus.CANCELLED, reason="cancelled", cancelled_at=now, updated_at=now)
        legs = Legs()
        await self.orders.update_order_status(order, update, trigger_seen=trigger_of(order).price, tx=legs)
        await (await self.settlement.release_legs(order, legs, OrderStatus.CANCELLED, now)).commit(self.store)

    def order(self, order_type: OrderType, quantity: Decimal, total: Decimal, **more: Any) -> Order:
        now = self.clock.now()
        return Order(
            order_id=new_id(),
            username=self.username,
            order_type=order_type,
            asset_id=ASSET,
            quantity=quantity,
            status=OrderStatus.COMPLETED,
            executed_price=D(1),
            total_amount=total,
            executed_at=now,
            created_at=now,
            updated_at=now,
            **more,
        )

    async def state(self) -> tuple[Decimal, Decimal, Decimal]:
        holding = await self.holdings.get_holding(self.username, ASSET)
        if holding is None:
            return ZERO, ZERO, ZERO
        return holding.available, holding.held, holding.cost_basis


async def open_books(store: ItemStore, *, planned: bool, cash: str = "100000000.00") -> Books:
    """A new user with `cash` on a store that has (or is given) the asset and its house inventory."""
    clock = FakeClock()
    balances, holdings, assets = BalanceDAO(store, clock), HoldingDAO(store, clock), AssetDAO(store, clock)
    now = clock.now()
    if await store.get(keys.INVENTORY, keys.house_inventory_key(ASSET)) is None:
        await assets.create_asset(
            Asset(asset_id=ASSET, name="Bitcoin", symbol=ASSET, created_at=now, updated_at=now), D("1000000000")
        )
    username = f"u{uuid.uuid4().hex[:12]}"
    profile = User(
        username=username,
        email=f"{username}@example.com",
        first_name="A",
        last_name="B",
        password_hash="-",
        created_at=now,
        updated_at=now,
    )
    await store.transact([Put(keys.USERS, user_to_item(profile), NotExists())])  # the audit lists users
    await balances.create_balance(username)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username=username,
        transaction_type=TransactionType.DEPOSIT,
        amount=D(cash),
        available_change=D(cash),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    settlement = Settlement(store, balances, holdings, assets.house, planned_sells=planned)
    return Books(store, clock, holdings, OrderDAO(store, clock), settlement, username)


# --- sequences --------------------------------------------------------------------------------

units = st.integers(min_value=1, max_value=3_000).map(lambda n: D(n).scaleb(-3))  # 0.001 .. 3.000
cents = st.integers(min_value=1, max_value=5_000_000).map(lambda n: D(n).scaleb(-2))  # 0.01 .. 50,000.00
steps = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), units, cents),
        st.tuples(st.just("sell"), units, cents),
        st.tuples(st.just("sell_all"), st.just(ZERO), cents),
        st.tuples(st.just("hold"), units, st.just(ZERO)),
        st.tuples(st.just("fill"), st.just(ZERO), cents),
        st.tuples(st.just("release"), st.just(ZERO), st.just(ZERO)),
    ),
    min_size=1,
    max_size=24,
)


async def replay(books: Books, sequence: list[tuple[str, Decimal, Decimal]]) -> None:
    """Run `sequence` through the system and the reference side by side, comparing after each
    step: the holding (units, cost basis) and each sell's realised P&L, returned and stored."""
    ref = Reference()
    for kind, quantity, money in sequence:
        sold: Order | None = None
        if kind == "buy":
            ref.buy(quantity, money)
            await books.buy(quantity, money)
        elif kind in ("sell", "sell_all"):
            quantity = ref.available if kind == "sell_all" else quantity
            if quantity == 0:
                continue
            expected = ref.sell(quantity, money, False)
            sold = await books.market_sell(quantity, money)
            assert (sold is not None) == expected, (kind, quantity)
        elif kind == "hold":
            assert await books.hold(quantity) == ref.hold(quantity)
        elif not books.resting:
            continue
        elif kind == "fill":
            assert ref.sell(books.resting[0].quantity, money, True)
            sold = await books.fill(money)
            assert sold is not None
        else:
            assert ref.release(books.resting[0].quantity)
            await books.release()
        if sold is not None:
            assert sold.realized_pnl == ref.realised[-1]
            stored = await books.orders.get_order(books.username, sold.order_id)
            assert (stored.status, stored.realized_pnl) == (OrderStatus.COMPLETED, ref.realised[-1])
        assert await books.state() == (ref.available, ref.held, ref.cost), (kind, quantity, money)


@settings(max_examples=60, deadline=None)
@given(sequence=steps, planned=st.booleans())
def test_any_sequence_on_sqlite_gives_the_reference_cost_basis_and_pnl(
    tmp_path_factory: pytest.TempPathFactory, sequence: list[tuple[str, Decimal, Decimal]], planned: bool
) -> None:
    from cnop.common.database.sqlite import SQLiteStore

    async def scenario() -> None:
        store = SQLiteStore(str(tmp_path_factory.mktemp("books") / "store.db"))
        await store.create_tables()
        try:
            books = await open_books(store, planned=planned)
            assert isinstance(books.settlement.planner, PlannedTransactions) is planned
            await replay(books, sequence)
            await assert_audit_passes(store)
        finally:
            await store.close()

    asyncio.run(scenario())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=steps)
def test_any_sequence_on_either_engine_gives_the_reference_cost_basis_and_pnl(
    store_factory: StoreFactory, sequence: list[tuple[str, Decimal, Decimal]]
) -> None:
    """The engine's own way (planned on SQLite, read then guarded write on DynamoDB)."""

    async def scenario() -> None:
        store = store_factory()
        await store.create_tables()
        try:
            await replay(await open_books(store, planned=True), sequence)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_reference_keeps_the_cents_that_rounding_moves() -> None:
    """The model itself, on the case that tells average cost from total bought / total units:
    a sell between two buys takes out the average of the first buy only."""
    ref = Reference()
    ref.buy(D(1), D("100.00"))
    ref.sell(D(1), D("100.00"), False)
    ref.buy(D(1), D("200.00"))
    assert (ref.cost, ref.realised) == (D("200.00"), [D("0.00")])
    ref = Reference()
    ref.buy(D(7), D("100.00"))
    for _ in range(7):
        ref.sell(D(1), D("20.00"), False)
    assert ref.cost == 0
    assert Counter(D("20.00") - r for r in ref.realised) == {D("14.29"): 4, D("14.28"): 3}


# --- concurrent sells of one holding ------------------------------------------------------------


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "read-path"])
async def test_many_concurrent_sells_of_one_holding_lose_nothing(store: ItemStore, planned: bool) -> None:
    """64 sells of 1 unit at once against 40 units: exactly 40 apply, the rest find no units;
    units and cost basis are conserved, nothing goes negative, the audit passes, and each sell's
    P&L is exactly a step of the reference replayed one sell after another (no sell settled for
    a stale cost basis: the last one takes exactly what is left)."""
    books = await open_books(store, planned=planned)
    await books.buy(D(40), D("1000.01"))
    results = await asyncio.gather(*(books.market_sell(D(1), D("30.00")) for _ in range(64)))
    sold = [order for order in results if order is not None]
    assert len(sold) == 40
    assert await books.state() == (ZERO, ZERO, ZERO)
    taken = sum((D("30.00") - order.realized_pnl for order in sold if order.realized_pnl is not None), ZERO)
    assert taken == D("1000.01")
    assert all(order.realized_pnl is not None and D("30.00") - order.realized_pnl >= 0 for order in sold)
    ref = Reference()
    ref.buy(D(40), D("1000.01"))
    for _ in range(40):
        ref.sell(D(1), D("30.00"), False)
    assert Counter(order.realized_pnl for order in sold) == Counter(ref.realised)
    await assert_audit_passes(store)


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "read-path"])
async def test_concurrent_buys_and_sells_of_one_holding_keep_units_and_cost_conserved(
    store: ItemStore, planned: bool
) -> None:
    books = await open_books(store, planned=planned)
    await books.buy(D(10), D("500.00"))
    work = [books.buy(D(1), D("61.17")) if n % 3 == 0 else books.market_sell(D(1), D("55.00")) for n in range(48)]
    results = await asyncio.gather(*work)
    sold = [order for n, order in enumerate(results) if n % 3 and order is not None]
    bought = sum(1 for n in range(48) if n % 3 == 0)
    available, held, cost = await books.state()
    assert held == 0 and available == 10 + bought - len(sold) >= 0
    taken = sum((D("55.00") - o.realized_pnl for o in sold if o.realized_pnl is not None), ZERO)
    assert cost == D("500.00") + bought * D("61.17") - taken >= 0
    await assert_audit_passes(store)
