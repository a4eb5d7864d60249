"""Settlement against the SQLite engine in a temp dir: the legs of a trade, their names, the
domain error a failed leg maps to, the sell planned inside its transaction, and the cost-basis
retry policy of the read-then-write path (the one DynamoDB takes)."""

from __future__ import annotations

import asyncio
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
from cnop.common.dao.house_dao import HouseInventory
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
from cnop.services.order.settlement import SELL_ATTEMPTS, Settlement, UnitsMissing
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
    # One shard: the raw buys interleaved below (no fallback to other shards) always find the units.
    assets = AssetDAO(store, clock, house=HouseInventory(store, 1))
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


def read_path(world: World) -> Settlement:
    """Settlement that reads and retries even on SQLite, as it does on DynamoDB."""
    return Settlement(world.store, world.balances, world.holdings, world.assets.house, planned_sells=False)


def count_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    real, reads = world.store.get, []

    async def counted(table: str, key: Any, *, consistent: bool = True) -> Any:
        reads.append(key)
        return await real(table, key, consistent=consistent)

    monkeypatch.setattr(world.store, "get", counted)
    return reads


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


async def test_a_sell_retries_from_the_holding_its_failure_saw_and_takes_the_exact_cost(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the read path, two buys of the same holding land between the sell's read and its
    first two transactions: each retry starts from the holding the failure returned (one read in
    all), and the cost basis that leaves is the average after both buys."""
    await buy_units(world, "3", "100.00")
    real = world.store.transact
    calls: list[int] = []

    async def interleaved(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append(len(ops))
        if len(calls) <= 2:
            buy = filled(world, OrderType.MARKET_BUY, "1", "50", "50.00")
            await real((await world.settlement.buy_legs(buy, await order_legs(world, buy))).ops)
        await real(ops, token=token)

    monkeypatch.setattr(world.store, "transact", interleaved)
    reads = count_reads(world, monkeypatch)
    order = await read_path(world).settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert (len(calls), len(reads)) == (3, 1)
    assert order.realized_pnl == D("0.00")  # 40.00 - 200.00 * 1 / 5
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("4"), D("160.00"))
    sells = [o for o in (await world.orders.get_orders_by_user(USER)).items if o.order_type is OrderType.MARKET_SELL]
    assert len(sells) == 1  # only the attempt that applied left an order


async def test_a_sell_whose_holding_never_stops_changing_gives_up_and_writes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every transaction is preceded by another change of the holding: the sell never settles
    for a stale cost basis; after `SELL_ATTEMPTS` it is a store error (a 503) and nothing of it
    is written."""
    await buy_units(world, "3", "100.00")
    real = world.store.transact
    calls: list[int] = []

    async def interleaved(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append(len(ops))
        await real([world.holdings.change_op(USER, "BTC", world.clock.now(), available=D("0"))])
        await real(ops, token=token)

    monkeypatch.setattr(world.store, "transact", interleaved)
    before = (await snapshot(world))[:2]
    with pytest.raises(StoreError, match="kept changing"):
        await read_path(world).settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert len(calls) == SELL_ATTEMPTS
    assert (await snapshot(world))[:2] == before
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("3"), D("100.00"))
    assert not [o for o in (await world.orders.get_orders_by_user(USER)).items if o.order_type is OrderType.MARKET_SELL]


async def test_sells_of_one_holding_in_one_process_follow_each_other_without_retries(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the read path, 7 sells of one holding at once: one read, one transaction each, and
    every cost basis exact (the reference: 7 units worth 100.00 sold one by one)."""
    await buy_units(world, "7", "100.00")
    real = world.store.transact
    calls: list[int] = []

    async def counted(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append(len(ops))
        await real(ops, token=token)

    monkeypatch.setattr(world.store, "transact", counted)
    reads = count_reads(world, monkeypatch)
    settlement = read_path(world)
    results = await asyncio.gather(
        *(settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "20.00"), from_held=False) for _ in range(7)),
        return_exceptions=True,
    )
    assert (len(calls), len(reads)) == (7, 1)
    outs = [
        D("20.00") - order.realized_pnl
        for order in results
        if isinstance(order, Order) and order.realized_pnl is not None
    ]
    assert outs == [D("14.29"), D("14.28"), D("14.29"), D("14.28"), D("14.29"), D("14.28"), D("14.29")]
    assert not settlement._sell_chain  # nothing left behind
    more = await asyncio.gather(
        *(settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "20.00"), from_held=False) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, UnitsMissing) for r in more) and len(reads) == 4  # no predecessor committed: each reads
    assert not settlement._sell_chain


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
    order = await read_path(world).settle_sell(USER, "BTC", D("2"), selling(world, "2", "80.00"), from_held=False)
    assert calls == [6] and order.realized_pnl == D("0.00")
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("0"), D("0.00"))


async def test_a_planned_sell_reads_nothing_before_and_runs_one_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the cost basis is computed inside the transaction: no read before it, no
    `transact` with a version guard, one planned transaction."""
    await buy_units(world, "3", "100.00")
    reads = count_reads(world, monkeypatch)
    real_transact, real_planned = world.store.transact, world.store.transact_planned
    calls: list[str] = []

    async def transact(ops: Sequence[Op], *, token: str | None = None) -> None:
        calls.append("transact")
        await real_transact(ops, token=token)

    async def planned(table: str, key: Any, plan: Any) -> None:
        calls.append("planned")
        await real_planned(table, key, plan)

    monkeypatch.setattr(world.store, "transact", transact)
    monkeypatch.setattr(world.store, "transact_planned", planned)
    order = await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert (reads, calls) == ([], ["planned"])
    assert order.realized_pnl == D("6.67")
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis, holding.version) == (
        D("2"),
        D("66.67"),
        D("2"),
    )
    stored = await world.orders.get_order(USER, order.order_id)
    assert stored.realized_pnl == D("6.67") and stored.total_amount == D("40.00")


async def test_a_planned_sell_sees_a_buy_queued_before_it_in_the_same_commit(world: World) -> None:
    """A buy and a sell queued together: the sell's cost basis is the one after the buy, as if
    run one after the other (the read path would have read before the buy and retried)."""
    await buy_units(world, "1", "10.00")
    buy = filled(world, OrderType.MARKET_BUY, "2", "1", "50.00")
    buying = world.settlement.settle_buy(buy, await order_legs(world, buy))
    selling_ = world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    _, sold = await asyncio.gather(buying, selling_)
    assert sold.realized_pnl == D("20.00")  # 40.00 - 60.00 * 1 / 3
    holding = await world.holdings.get_holding(USER, "BTC")
    assert holding is not None and (holding.available, holding.cost_basis) == (D("2"), D("40.00"))


async def test_a_planned_sell_of_missing_units_writes_nothing(world: World) -> None:
    await buy_units(world, "0.5", "10.00")
    before = await snapshot(world)
    with pytest.raises(UnitsMissing) as missing:
        await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert missing.value.have == D("0.5")
    with pytest.raises(UnitsMissing):
        await world.settlement.settle_sell(USER, "ETH", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert await snapshot(world) == before


async def test_a_planned_sell_refused_by_another_leg_names_it(world: World) -> None:
    """A leg of the planned transaction that fails is named as on the read path (here the
    idempotency record another request owns), and nothing is written."""
    await buy_units(world, "1", "10.00")

    def mark(result_id: str) -> Op:
        return Update(
            keys.USERS,
            keys.idempotency_key(USER, "order", "k2"),
            set={"result_id": result_id},
            condition=Eq("owner", "someone-else"),
        )

    before = await snapshot(world)
    with applying(mark), pytest.raises(GuardFailed) as failed:
        await world.settlement.settle_sell(USER, "BTC", D("1"), selling(world, "1", "40.00"), from_held=False)
    assert (failed.value.leg, failed.value.index) == (Leg.IDEMPOTENCY, 6)
    assert await snapshot(world) == before
