"""Settlement against the SQLite engine in a temp dir: the legs of a trade, their names, the
domain error a failed leg maps to, and the cost-basis retry policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Eq, Op, Update
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderStatus, OrderType
from cnop.common.exceptions import IdempotencyInProgress, InsufficientFunds, InsufficientInventory, StoreError
from cnop.common.idempotency import applying
from cnop.common.ids import new_id
from cnop.services.order.service import market_refusal
from cnop.services.order.settlement import EXACT_COST_BASIS_ATTEMPTS, SELL_ATTEMPTS, Settlement, UnitsMissing
from tests.support.house import house_totals

D = Decimal
USER = "alice"


@dataclass
class World:
    store: SQLiteStore
    clock: FakeClock
    balances: BalanceDAO
    holdings: HoldingDAO
    assets: AssetDAO
    orders: OrderDAO
    settlement: Settlement


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.create_tables()
    clock = FakeClock()
    balances, holdings = BalanceDAO(store, clock), HoldingDAO(store, clock)
    assets = AssetDAO(store, clock)
    now = clock.now()
    await assets.create_asset(
        Asset(asset_id="BTC", name="Bitcoin", symbol="BTC", created_at=now, updated_at=now), D("10")
    )
    await balances.create_balance(USER)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username=USER,
        transaction_type=TransactionType.DEPOSIT,
        amount=D("10000.00"),
        available_change=D("10000.00"),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    yield World(
        store,
        clock,
        balances,
        holdings,
        assets,
        OrderDAO(store, clock),
        Settlement(store, balances, holdings, assets.house),
    )
    await store.close()


def filled(world: World, order_type: OrderType, quantity: str, price: str, total: str, **more: Any) -> Order:
    now = world.clock.now()
    return Order(
        order_id=new_id(),
        username=USER,
        order_type=order_type,
        asset_id="BTC",
        quantity=D(quantity),
        status=OrderStatus.COMPLETED,
        executed_price=D(price),
        total_amount=D(total),
        executed_at=now,
        created_at=now,
        updated_at=now,
        **more,
    )


async def house(world: World) -> tuple[Decimal, Decimal]:
    totals = await house_totals(world.store, "BTC")
    return totals["quantity"], totals["cash"]


async def ledger(world: World) -> list[BalanceTransaction]:
    page = await world.balances.get_user_transactions(USER, limit=50)
    return page.items


async def order_legs(world: World, order: Order) -> Legs:
    """A transaction holding the order's own write (`OrderDAO.create_order` joining it)."""
    legs = Legs()
    assert await world.orders.create_order(order, tx=legs) == order
    return legs


async def test_a_buy_names_its_legs_in_order(world: World) -> None:
    order = filled(world, OrderType.MARKET_BUY, "0.1", "50000", "5000.00")
    legs = await world.settlement.buy_legs(order, await order_legs(world, order))
    assert legs.names == [Leg.ORDER, Leg.LEDGER, Leg.BALANCE, Leg.HOLDING, Leg.ASSET_TRANSACTION, Leg.HOUSE]
    resting = await world.settlement.buy_legs(order, await order_legs(world, order), held=D("5200.00"))
    assert resting.names == [
        Leg.ORDER,
        Leg.LEDGER,
        Leg.LEDGER,
        Leg.BALANCE,
        Leg.HOLDING,
        Leg.ASSET_TRANSACTION,
        Leg.HOUSE,
    ]  # the payment and the refund of the unused 200.00
    sell = filled(world, OrderType.MARKET_SELL, "0.1", "50000", "5000.00")
    sold = await world.settlement.sell_legs(
        sell, await order_legs(world, sell), basis_out=D("0"), from_held=False, expected_version=None
    )
    assert sold.names == [Leg.ORDER, Leg.LEDGER, Leg.BALANCE, Leg.HOLDING, Leg.ASSET_TRANSACTION, Leg.HOUSE]
    assert [sold.leg_at(i) for i in range(6)] == sold.names


async def test_a_market_buy_moves_cash_units_and_the_house_side_at_once(world: World) -> None:
    order = filled(world, OrderType.MARKET_BUY, "0.1", "50000.05", "5000.01")
    await world.settlement.settle_buy(order, await order_legs(world, order))
    balance = await world.balances.get_balance(USER)
    assert (balance.available, balance.held) == (D("4999.99"), D("0.00"))
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.held, holding.cost_basis) == (
        D("0.1"),
        D("0"),
        D("5000.01"),
    )
    assert await house(world) == (D("9.9"), D("5000.01"))
    assert (await world.orders.get_order(USER, order.order_id)).total_amount == D("5000.01")
    payment = [e for e in await ledger(world) if e.transaction_type is TransactionType.ORDER_PAYMENT]
    assert len(payment) == 1
    assert (payment[0].amount, payment[0].available_change, payment[0].held_change) == (
        D("5000.01"),
        D("-5000.01"),
        D("0.00"),
    )
    assert payment[0].description == "Bought 0.1 BTC at 50000.05 USD"
    page = await world.holdings.get_asset_transactions(USER, "BTC")
    assert [
        (t.transaction_type, t.quantity, t.available_change, t.held_change, t.price, t.total) for t in page.items
    ] == [("buy", D("0.1"), D("0.1"), D("0"), D("50000.05"), D("5000.01"))]


async def test_a_buy_paid_from_a_reservation_refunds_what_it_did_not_use(world: World) -> None:
    hold = BalanceTransaction(
        transaction_id=new_id(),
        username=USER,
        transaction_type=TransactionType.ORDER_HOLD,
        amount=D("4000.00"),
        available_change=D("-4000.00"),
        held_change=D("4000.00"),
        description="hold",
        created_at=world.clock.now(),
    )
    await world.balances.create_transaction(hold)
    order = filled(world, OrderType.LIMIT_BUY, "0.1", "39000", "3900.00")
    await world.settlement.settle_buy(order, await order_legs(world, order), held=D("4000.00"), note=" (limit_buy)")
    balance = await world.balances.get_balance(USER)
    assert (balance.available, balance.held) == (D("6100.00"), D("0.00"))
    kinds = {e.transaction_type: e for e in await ledger(world)}
    payment, refund = kinds[TransactionType.ORDER_PAYMENT], kinds[TransactionType.ORDER_REFUND]
    assert (payment.available_change, payment.held_change) == (D("0.00"), D("-3900.00"))
    assert (refund.amount, refund.available_change, refund.held_change) == (D("100.00"), D("100.00"), D("-100.00"))
    assert payment.description == "Bought 0.1 BTC at 39000 USD (limit_buy)"


async def snapshot(world: World) -> tuple[Any, ...]:
    balance = await world.balances.get_balance(USER)
    holding = await world.holdings.get_holding(USER, "BTC")
    return balance.available, balance.held, holding, await house(world), len(await ledger(world))


async def test_a_buy_beyond_the_cash_fails_on_the_balance_leg_and_changes_nothing(world: World) -> None:
    before = await snapshot(world)
    order = filled(world, OrderType.MARKET_BUY, "0.3", "50000", "15000.00")
    with pytest.raises(GuardFailed) as failed:
        await world.settlement.settle_buy(order, await order_legs(world, order))
    assert (failed.value.leg, failed.value.index) == (Leg.BALANCE, 2)
    assert await snapshot(world) == before
    refusal = market_refusal(failed.value, order)
    assert isinstance(refusal, InsufficientFunds)
    assert refusal.detail == "Buying costs 15000.00 USD, more than your available cash"


async def test_a_buy_the_house_cannot_supply_fails_on_the_house_leg(world: World) -> None:
    before = await snapshot(world)
    order = filled(world, OrderType.MARKET_BUY, "11", "1", "11.00")
    with pytest.raises(GuardFailed) as failed:
        await world.settlement.settle_buy(order, await order_legs(world, order))
    assert (failed.value.leg, failed.value.index) == (Leg.HOUSE, 5)
    assert await snapshot(world) == before
    refusal = market_refusal(failed.value, order)
    assert isinstance(refusal, InsufficientInventory)
    assert refusal.detail == "The house cannot supply 11 BTC now"


async def test_an_idempotency_record_owned_by_another_fails_on_its_own_leg(world: World) -> None:
    def mark(result_id: str) -> Op:  # a claim this request does not own
        return Update(
            keys.USERS,
            keys.idempotency_key(USER, "order", "k1"),
            set={"result_id": result_id},
            condition=Eq("owner", "someone-else"),
        )

    before = await snapshot(world)
    order = filled(world, OrderType.MARKET_BUY, "0.1", "1", "0.10")
    with applying(mark), pytest.raises(GuardFailed) as failed:
        await world.settlement.settle_buy(order, await order_legs(world, order))
    assert (failed.value.leg, failed.value.index) == (Leg.IDEMPOTENCY, 6)
    assert await snapshot(world) == before
    assert isinstance(market_refusal(failed.value, order), IdempotencyInProgress)
    unexpected = market_refusal(GuardFailed(Leg.ASSET_TRANSACTION, 4), order)
    assert isinstance(unexpected, StoreError) and "asset_transaction" in str(unexpected)


async def buy_units(world: World, quantity: str, total: str) -> None:
    order = filled(world, OrderType.MARKET_BUY, quantity, "1", total)
    await world.settlement.settle_buy(order, await order_legs(world, order))


def selling(world: World, quantity: str, proceeds: str) -> Any:
    async def build(basis_out: Decimal, legs: Legs) -> Order:
        order = filled(world, OrderType.MARKET_SELL, quantity, "40", proceeds, realized_pnl=D(proceeds) - basis_out)
        return await world.orders.create_order(order, tx=legs)

    return build


async def test_a_sell_takes_out_the_average_cost_and_books_the_profit(world: World) -> None:
    await buy_units(world, "3", "100.00")
    order = await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert order.realized_pnl == D("6.67")  # 40.00 - 33.33
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("2"), D("66.67"))
    assert await house(world) == (D("8"), D("60.00"))
    assert (await world.balances.get_balance(USER)).available == D("9940.00")


async def test_a_sell_of_units_that_are_not_there_says_how_many_are(world: World) -> None:
    await buy_units(world, "0.5", "10.00")
    with pytest.raises(UnitsMissing) as missing:
        await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert missing.value.have == D("0.5")
    with pytest.raises(UnitsMissing) as none_held:  # a resting sell takes from held units, and none are
        await world.settlement.settle_sell(USER, "BTC", D("0.1"), selling(world, "0.1", "4.00"), from_held=True)
    assert none_held.value.have == D("0")


async def test_a_sell_reads_again_when_the_holding_changed_and_then_settles_for_the_guards(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every transaction is preceded by another trade of the same user on the same holding
    (it bumps the version): the first attempts insist on the version read, then the guards alone do."""
    await buy_units(world, "3", "100.00")
    real = world.store.transact
    calls: list[int] = []

    async def interleaved(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append(len(ops))
        await real([world.holdings.change_op(USER, "BTC", world.clock.now(), available=D("0"))])
        await real(ops, token=token)

    monkeypatch.setattr(world.store, "transact", interleaved)
    order = await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert len(calls) == EXACT_COST_BASIS_ATTEMPTS + 1 < SELL_ATTEMPTS
    assert order.realized_pnl == D("6.67")
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("2"), D("66.67"))
    sells = [o for o in (await world.orders.get_orders_by_user(USER)).items if o.order_type is OrderType.MARKET_SELL]
    assert len(sells) == 1  # only the attempt that applied left an order


async def test_a_sell_that_changes_nothing_between_read_and_write_applies_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await buy_units(world, "2", "80.00")
    real = world.store.transact
    calls: list[int] = []

    async def counted(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append(len(ops))
        await real(ops, token=token)

    monkeypatch.setattr(world.store, "transact", counted)
    order = await world.settlement.settle_sell(USER, "BTC", D("2"), selling(world, "2", "80.00"), from_held=False)
    assert calls == [6] and order.realized_pnl == D("0.00")
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("0"), D("0.00"))
