"""OrderDAO's seed methods on the SQLite engine: each writes alone or joins a use case's
transaction (`tx=`), and every status change goes through the state machine's table."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.order_dao import OrderDAO, OrderFilter, RestingIndex
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import SortKey
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.order import TRANSITIONS, Order, OrderStatus, OrderType, OrderUpdate, TimeInForce
from cnop.common.exceptions import ConditionFailed, OrderNotCancellable, OrderNotFound
from cnop.common.ids import new_id

D = Decimal
USER = "carol"
EVERY_PRICE = SortKey.ge(D("0"))


def an_order(clock: FakeClock, **fields: Any) -> Order:
    now = clock.now()
    values: dict[str, Any] = {
        "order_id": new_id(),
        "username": USER,
        "order_type": OrderType.LIMIT_BUY,
        "asset_id": "BTC",
        "quantity": D("0.5"),
        "price": D("40000"),
        "status": OrderStatus.QUEUED,
        "held_amount": D("20000.00"),
        "created_at": now,
        "updated_at": now,
    }
    return Order(**{**values, **fields})


@pytest.fixture
def orders(store: SQLiteStore, clock: FakeClock) -> OrderDAO:
    return OrderDAO(store, clock)


async def test_create_order_writes_alone_and_reads_back_exactly(orders: OrderDAO, clock: FakeClock) -> None:
    order = an_order(clock, expires_at=clock.now() + timedelta(days=1), time_in_force=TimeInForce.GTD)
    assert await orders.create_order(order, RestingIndex("below", D("40000"))) == order
    assert await orders.get_order(USER, order.order_id) == order
    assert await orders.find_order(USER, "no-such-order-id") is None
    with pytest.raises(OrderNotFound):
        await orders.get_order("someone_else", order.order_id)  # another user's id is not found
    with pytest.raises(ConditionFailed):
        await orders.create_order(order)  # the same id twice
    waiting = await orders.get_orders_by_trigger("BTC", "below", EVERY_PRICE)
    assert [o.order_id for o in waiting] == [order.order_id]
    assert [o.order_id for o in await orders.get_orders_due(clock.now() + timedelta(days=2))] == [order.order_id]


async def test_create_order_with_tx_writes_nothing_until_the_use_case_commits(
    orders: OrderDAO, store: SQLiteStore, clock: FakeClock
) -> None:
    order = an_order(clock)
    legs = Legs()
    assert await orders.create_order(order, tx=legs) == order
    assert legs.names == [Leg.ORDER]
    assert await orders.find_order(USER, order.order_id) is None
    await legs.commit(store)
    assert await orders.get_order(USER, order.order_id) == order
    again = Legs()
    await orders.create_order(order, tx=again)
    with pytest.raises(GuardFailed) as failed:
        await again.commit(store)
    assert (failed.value.leg, failed.value.index) == (Leg.ORDER, 0)


@pytest.mark.parametrize("current", list(OrderStatus))
async def test_update_order_status_allows_exactly_the_moves_of_the_table(
    orders: OrderDAO, clock: FakeClock, current: OrderStatus
) -> None:
    for target in OrderStatus:
        order = await orders.create_order(an_order(clock, status=current))
        if target in TRANSITIONS[current]:
            changed = await orders.update_order_status(order, OrderUpdate(status=target))
            assert changed.status is target
            assert (await orders.get_order(USER, order.order_id)).status is target
        else:
            legs = Legs()
            with pytest.raises(OrderNotCancellable):
                await orders.update_order_status(order, OrderUpdate(status=target), tx=legs)
            assert legs.ops == []
            with pytest.raises(OrderNotCancellable):
                await orders.update_order_status(order, OrderUpdate(status=target))
            assert (await orders.get_order(USER, order.order_id)).status is current


async def test_update_order_status_writes_the_facts_and_a_final_order_leaves_the_indexes(
    orders: OrderDAO, clock: FakeClock
) -> None:
    order = await orders.create_order(an_order(clock), RestingIndex("below", D("40000")))
    clock.advance(60)
    now = clock.now()
    update = OrderUpdate(
        status=OrderStatus.COMPLETED,
        executed_price=D("39999.5"),
        total_amount=D("19999.75"),
        executed_at=now,
    )
    changed = await orders.update_order_status(order, update, trigger_seen=D("40000"))
    assert changed == await orders.get_order(USER, order.order_id)
    assert (changed.status, changed.executed_price, changed.total_amount) == (
        OrderStatus.COMPLETED,
        D("39999.5"),
        D("19999.75"),
    )
    assert changed.executed_at == now and changed.updated_at == now  # the DAO's clock when not given
    assert await orders.get_orders_by_trigger("BTC", "below", EVERY_PRICE) == []


async def test_update_order_status_is_guarded_on_the_status_and_the_trigger_read(
    orders: OrderDAO, store: SQLiteStore, clock: FakeClock
) -> None:
    order = await orders.create_order(an_order(clock), RestingIndex("below", D("40000")))
    legs = Legs()
    expected = await orders.update_order_status(
        order, OrderUpdate(status=OrderStatus.EXPIRED, reason="gone", updated_at=clock.now()), tx=legs
    )
    assert expected.status is OrderStatus.EXPIRED and expected.reason == "gone"
    assert (await orders.get_order(USER, order.order_id)).status is OrderStatus.QUEUED  # not yet committed
    moved = Legs()
    await orders.update_order_status(
        order, OrderUpdate(status=OrderStatus.CANCELLED), trigger_seen=D("41000"), tx=moved
    )  # the engine saw another trigger than the one stored
    with pytest.raises(GuardFailed) as failed:
        await moved.commit(store)
    assert failed.value.leg is Leg.ORDER
    await legs.commit(store)
    assert await orders.get_order(USER, order.order_id) == expected
    with pytest.raises(OrderNotCancellable):  # read as queued, stored as expired now
        await orders.update_order_status(order, OrderUpdate(status=OrderStatus.CANCELLED))
    assert (await orders.get_order(USER, order.order_id)).status is OrderStatus.EXPIRED


async def test_update_order_changes_fields_only_while_they_hold_what_was_read(
    orders: OrderDAO, store: SQLiteStore, clock: FakeClock
) -> None:
    order = await orders.create_order(an_order(clock, price=D("40000")), RestingIndex("below", D("40000")))
    clock.advance(5)
    changed = await orders.update_order(order, {"price": D("39000")}, index=RestingIndex("below", D("39000")))
    assert changed is not None and changed.price == D("39000") and changed.updated_at == clock.now()
    assert await orders.get_order(USER, order.order_id) == changed
    assert [o.price for o in await orders.get_orders_by_trigger("BTC", "below", SortKey.le(D("39000")))] == [D("39000")]
    assert await orders.update_order(order, {"price": D("38000")}) is None  # read at the old price
    legs = Legs()
    await orders.update_order(order, {"price": D("38000")}, tx=legs)
    with pytest.raises(GuardFailed) as failed:
        await legs.commit(store)
    assert failed.value.leg is Leg.ORDER
    assert (await orders.get_order(USER, order.order_id)).price == D("39000")


async def test_the_seed_queries_return_typed_pages(orders: OrderDAO, clock: FakeClock) -> None:
    made = []
    for asset, status in (("BTC", OrderStatus.QUEUED), ("ETH", OrderStatus.COMPLETED), ("BTC", OrderStatus.CANCELLED)):
        clock.advance(1)
        made.append(await orders.create_order(an_order(clock, asset_id=asset, status=status)))
    newest_first = [o.order_id for o in reversed(made)]
    page = await orders.get_orders_by_user(USER)
    assert [o.order_id for o in page.items] == newest_first and not page.has_more
    first = await orders.get_orders_by_user(USER, limit=2)
    rest = await orders.get_orders_by_user(USER, limit=2, cursor=first.next_cursor)
    assert [o.order_id for o in first.items + rest.items] == newest_first
    btc = await orders.get_orders_by_user_and_asset(USER, "BTC")
    assert [o.order_id for o in btc.items] == [made[2].order_id, made[0].order_id]
    done = await orders.get_orders_by_user_and_status(USER, OrderStatus.COMPLETED)
    assert [o.order_id for o in done.items] == [made[1].order_id]
    assert [o.order_id for o in await orders.get_queued_orders(USER)] == [made[0].order_id]
    closed = await orders.get_orders_by_user(USER, where=OrderFilter(open=False), descending=False)
    assert [o.order_id for o in closed.items] == [made[1].order_id, made[2].order_id]
    assert (await orders.get_orders_by_user("nobody")).items == []
