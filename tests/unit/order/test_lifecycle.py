"""A resting order's life against the SQLite engine, without HTTP: placement holds, the state
machine guards every status change, fills and releases map their failed legs by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.house_dao import HouseInventory
from cnop.common.dao.order_dao import OrderDAO, RestingIndex
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import SortKey
from cnop.common.database.transaction import Leg, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import TRANSITIONS, OrderCreate, OrderStatus, OrderType, OrderUpdate
from cnop.common.events import InProcessEventBus
from cnop.common.exceptions import InsufficientFunds, OrderNotCancellable
from cnop.common.ids import new_id
from cnop.services.order.fills import Fills
from cnop.services.order.placement import Placement
from cnop.services.order.release import Release
from cnop.services.order.settlement import Settlement
from tests.support.house import set_house_units

D = Decimal
USER = "bob"
EVERY_PRICE = SortKey.ge(D("0"))


@dataclass
class Book:
    store: SQLiteStore
    clock: FakeClock
    orders: OrderDAO
    balances: BalanceDAO
    placement: Placement
    release: Release
    fills: Fills


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[Book]:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.create_tables()
    clock = FakeClock()
    now = clock.now()
    orders, balances, holdings = OrderDAO(store, clock), BalanceDAO(store, clock), HoldingDAO(store, clock)
    await AssetDAO(store, clock).create_asset(
        Asset(asset_id="BTC", name="Bitcoin", symbol="BTC", created_at=now, updated_at=now), D("1")
    )
    await balances.create_balance(USER)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username=USER,
        transaction_type=TransactionType.DEPOSIT,
        amount=D("5000.00"),
        available_change=D("5000.00"),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    events = InProcessEventBus(clock)
    settlement = Settlement(store, balances, holdings, HouseInventory(store))
    release = Release(store, orders, settlement, clock, events)
    yield Book(
        store,
        clock,
        orders,
        balances,
        Placement(store, orders, settlement, Settings(), clock, events),
        release,
        Fills(orders, settlement, release, clock, events),
    )
    await store.close()


def limit_buy(quantity: str = "0.1", price: str = "40000") -> OrderCreate:
    return OrderCreate(order_type=OrderType.LIMIT_BUY, asset_id="BTC", quantity=quantity, price=price)


async def cash(book: Book) -> tuple[Decimal, Decimal]:
    balance = await book.balances.get_balance(USER)
    return balance.available, balance.held


async def test_a_queued_buy_holds_its_cash_and_a_fill_pays_and_refunds(book: Book) -> None:
    order = await book.placement.queue(USER, limit_buy(), D("50000"))
    assert (order.status, order.held_amount) == (OrderStatus.QUEUED, D("4000.00"))
    assert await cash(book) == (D("1000.00"), D("4000.00"))
    done = await book.fills.fill(order, D("39000"))
    assert done is not None and (done.status, done.total_amount, done.executed_price) == (
        OrderStatus.COMPLETED,
        D("3900.00"),
        D("39000"),
    )
    assert await cash(book) == (D("1100.00"), D("0.00"))
    stored = await book.orders.get_order(USER, order.order_id)
    assert (stored.status, stored.total_amount) == (OrderStatus.COMPLETED, D("3900.00"))
    assert await book.fills.fill(order, D("39000")) is None  # the same order never fills twice
    assert await cash(book) == (D("1100.00"), D("0.00"))
    assert await book.orders.get_orders_by_trigger("BTC", "below", EVERY_PRICE) == []  # it left the trigger index


async def test_a_reservation_beyond_the_cash_is_refused_by_the_balance_leg(book: Book) -> None:
    with pytest.raises(InsufficientFunds) as refused:
        await book.placement.queue(USER, limit_buy("0.2"), D("50000"))
    assert refused.value.detail == "Reserving 8000.00 USD needs more available cash"
    assert await cash(book) == (D("5000.00"), D("0.00"))
    assert (await book.orders.get_orders_by_user(USER)).items == []


async def test_cancel_releases_the_hold_once_through_the_state_machine(book: Book) -> None:
    order = await book.placement.queue(USER, limit_buy(), D("50000"))
    closed = await book.release.cancel(USER, order.order_id)
    assert (closed.status, closed.reason, closed.cancelled_at) == (
        OrderStatus.CANCELLED,
        "cancelled by the user",
        book.clock.now(),
    )
    assert await cash(book) == (D("5000.00"), D("0.00"))
    with pytest.raises(OrderNotCancellable) as again:
        await book.release.cancel(USER, order.order_id)
    assert again.value.detail == "The order is already cancelled"
    assert await book.release.release(order, OrderStatus.EXPIRED, "late") is None  # no longer queued
    assert await cash(book) == (D("5000.00"), D("0.00"))


async def test_a_fill_the_cash_cannot_cover_fails_the_order_and_releases_the_hold(book: Book) -> None:
    order = await book.placement.queue(USER, limit_buy("0.1", "40000"), D("50000"))
    # Spend the rest of the cash, then fill above the reservation: the balance leg refuses.
    spend = BalanceTransaction(
        transaction_id=new_id(),
        username=USER,
        transaction_type=TransactionType.WITHDRAW,
        amount=D("1000.00"),
        available_change=D("-1000.00"),
        held_change=D("0.00"),
        description="Withdrawal",
        created_at=book.clock.now(),
    )
    await book.balances.create_transaction(spend)
    assert await book.fills.fill(order, D("40000.01")) is None
    failed = await book.orders.get_order(USER, order.order_id)
    assert (failed.status, failed.reason) == (
        OrderStatus.FAILED,
        "the fill cost more than the reservation and the available cash",
    )
    assert await cash(book) == (D("4000.00"), D("0.00"))


async def test_a_fill_the_house_cannot_supply_fails_the_order(book: Book) -> None:
    order = await book.placement.queue(USER, limit_buy("0.1"), D("50000"))
    await set_house_units(book.store, "BTC", D("0.05"))
    assert await book.fills.fill(order, D("39000")) is None
    failed = await book.orders.get_order(USER, order.order_id)
    assert (failed.status, failed.reason) == (OrderStatus.FAILED, "the house could not supply the units")
    assert await cash(book) == (D("5000.00"), D("0.00"))


async def test_the_state_machine_refuses_a_change_out_of_a_final_status(book: Book) -> None:
    order = await book.placement.queue(USER, limit_buy(), D("50000"))
    done = await book.fills.fill(order, D("39000"))
    assert done is not None
    for target in OrderStatus:
        assert target not in TRANSITIONS[OrderStatus.COMPLETED]
        legs = Legs()
        with pytest.raises(OrderNotCancellable):
            await book.orders.update_order_status(done, OrderUpdate(status=target), tx=legs)
        assert legs.ops == []  # refused before anything joins the transaction
    assert OrderStatus.COMPLETED in TRANSITIONS[OrderStatus.QUEUED]
    legs = Legs()
    await book.orders.update_order_status(order, OrderUpdate(status=OrderStatus.COMPLETED), tx=legs)  # allowed
    assert legs.names == [Leg.ORDER]


async def test_a_trailing_stop_moves_once_per_anchor_and_a_stop_limit_converts_once(book: Book) -> None:
    trailing = await book.placement.queue(
        USER,
        OrderCreate(order_type=OrderType.TRAILING_STOP_BUY, asset_id="BTC", quantity="0.01", trail_amount="1000"),
        D("50000"),
    )
    assert (trailing.trail_anchor, trailing.stop_price) == (D("50000"), D("51000.00000000"))
    moved = await book.orders.move_trail(trailing, D("49000"), D("50000.00000000"), "above")
    assert moved is not None and (moved.trail_anchor, moved.stop_price) == (D("49000"), D("50000.00000000"))
    assert await book.orders.move_trail(trailing, D("48000"), D("49000"), "above") is None  # read at the old anchor
    stored = await book.orders.get_order(USER, trailing.order_id)
    assert (stored.trail_anchor, stored.stop_price) == (D("49000"), D("50000.00000000"))

    stop_limit = await book.placement.queue(
        USER,
        OrderCreate(
            order_type=OrderType.STOP_LIMIT_BUY, asset_id="BTC", quantity="0.01", stop_price="55000", price="56000"
        ),
        D("50000"),
    )
    converted = await book.orders.convert_stop_limit(stop_limit, RestingIndex("below", D("56000")))
    assert converted is not None and converted.stage == "limit"
    assert await book.orders.convert_stop_limit(stop_limit, RestingIndex("below", D("56000"))) is None
    waiting = await book.orders.get_orders_by_trigger("BTC", "below", EVERY_PRICE)
    assert [o.order_id for o in waiting] == [stop_limit.order_id]
