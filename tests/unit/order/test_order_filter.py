"""The typed order-list filter and the typed pages the OrderDAO returns (SQLite in a temp dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.order_dao import OrderDAO, OrderFilter
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.entities.order import Order, OrderSide, OrderStatus, OrderType
from cnop.common.ids import new_id

USER = "carol"


@pytest.fixture
async def dao(tmp_path: Path) -> AsyncIterator[tuple[OrderDAO, FakeClock]]:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.create_tables()
    clock = FakeClock()
    yield OrderDAO(store, clock), clock
    await store.close()


async def place(
    dao: OrderDAO, clock: FakeClock, kind: OrderType, asset: str, status: OrderStatus, **more: str
) -> Order:
    clock.advance(60)
    order = Order(
        order_id=new_id(),
        username=USER,
        order_type=kind,
        asset_id=asset,
        quantity=Decimal("1"),
        status=status,
        created_at=clock.now(),
        updated_at=clock.now(),
        **more,
    )
    return await dao.create_order(order)


async def test_each_filter_field_narrows_the_list_and_pages_are_orders(dao: tuple[OrderDAO, FakeClock]) -> None:
    orders, clock = dao
    start = clock.now()
    a = await place(orders, clock, OrderType.MARKET_BUY, "BTC", OrderStatus.COMPLETED, client_order_id="bot-1")
    b = await place(orders, clock, OrderType.LIMIT_SELL, "ETH", OrderStatus.QUEUED)
    c = await place(orders, clock, OrderType.LIMIT_BUY, "BTC", OrderStatus.CANCELLED)
    d = await place(orders, clock, OrderType.STOP_LOSS_SELL, "BTC", OrderStatus.QUEUED)

    async def ids(where: OrderFilter | None) -> list[str]:
        page = await orders.get_orders_by_user(USER, where=where)
        assert all(isinstance(o, Order) for o in page.items)
        return [o.order_id for o in page.items]

    newest_first = [d.order_id, c.order_id, b.order_id, a.order_id]
    assert await ids(None) == newest_first
    assert await ids(OrderFilter()) == newest_first
    assert await ids(OrderFilter(asset_ids=frozenset({"BTC"}))) == [d.order_id, c.order_id, a.order_id]
    assert await ids(OrderFilter(order_type=OrderType.LIMIT_SELL)) == [b.order_id]
    assert await ids(OrderFilter(side=OrderSide.SELL)) == [d.order_id, b.order_id]
    assert await ids(OrderFilter(status=OrderStatus.CANCELLED)) == [c.order_id]
    assert await ids(OrderFilter(open=True)) == [d.order_id, b.order_id]
    assert await ids(OrderFilter(open=False)) == [c.order_id, a.order_id]
    assert await ids(OrderFilter(client_order_id="bot-1")) == [a.order_id]
    # after is exclusive, until inclusive
    assert await ids(OrderFilter(created_after=a.created_at, created_until=c.created_at)) == [c.order_id, b.order_id]
    assert await ids(OrderFilter(created_until=start + timedelta(seconds=59))) == []
    assert await ids(OrderFilter(asset_ids=frozenset({"BTC"}), open=True, side=OrderSide.SELL)) == [d.order_id]


async def test_a_filtered_list_pages_on_with_a_cursor(dao: tuple[OrderDAO, FakeClock]) -> None:
    orders, clock = dao
    placed = [await place(orders, clock, OrderType.LIMIT_BUY, "BTC", OrderStatus.QUEUED) for _ in range(5)]
    await place(orders, clock, OrderType.LIMIT_BUY, "ETH", OrderStatus.QUEUED)
    where = OrderFilter(asset_ids=frozenset({"BTC"}))
    first = await orders.get_orders_by_user(USER, limit=3, where=where)
    assert first.has_more and [o.order_id for o in first.items] == [o.order_id for o in placed[:1:-1]]
    rest = await orders.get_orders_by_user(USER, limit=3, cursor=first.next_cursor, where=where)
    assert [o.order_id for o in rest.items] == [placed[1].order_id, placed[0].order_id]
    queued = await orders.get_queued_orders(USER)
    assert len(queued) == 6 and {o.status for o in queued} == {OrderStatus.QUEUED}
