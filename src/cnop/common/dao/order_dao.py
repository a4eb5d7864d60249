"""OrderDAO: orders on the orders table (newest first per user), with the seed's methods."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import (
    Eq,
    Item,
    ItemStore,
    NotExists,
    Op,
    Page,
    Put,
    SortKey,
    Update,
    filtered_query,
)
from cnop.common.entities.order import (
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    TimeInForce,
    can_transition,
)
from cnop.common.exceptions import ConditionFailed, OrderNotCancellable, OrderNotFound

_DECIMALS = (
    "quantity",
    "price",
    "stop_price",
    "trail_amount",
    "trail_percent",
    "executed_price",
    "total_amount",
    "held_amount",
    "realized_pnl",
    "trail_anchor",
)
_TIMES = ("expires_at", "created_at", "updated_at", "executed_at", "cancelled_at")
# `expires_at` is the store's TTL attribute (epoch seconds); an order's good-till time is stored
# under another name so the store never mistakes it for the item's own expiry.
_STORED_NAME = {"expires_at": "good_till"}


def order_to_item(order: Order) -> Item:
    item: Item = {
        **keys.order_key(order.username, order.order_id),
        "order_id": order.order_id,
        "username": order.username,
        "client_order_id": order.client_order_id,
        "order_type": order.order_type.value,
        "asset_id": order.asset_id,
        "time_in_force": order.time_in_force.value,
        "status": order.status.value,
        "reason": order.reason,
        "stage": order.stage,
    }
    for name in _DECIMALS:
        item[name] = getattr(order, name)
    for name in _TIMES:
        value = getattr(order, name)
        item[_STORED_NAME.get(name, name)] = isoformat(value) if value is not None else None
    return item


def order_from_item(item: Item) -> Order:
    values: dict[str, Any] = {name: item.get(name) for name in _DECIMALS}
    values["held_amount"] = item.get("held_amount") or Decimal(0)
    for name in _TIMES:
        raw = item.get(_STORED_NAME.get(name, name))
        values[name] = parse_isoformat(raw) if raw else None
    return Order(
        order_id=item["order_id"],
        username=item["username"],
        client_order_id=item.get("client_order_id"),
        order_type=OrderType(item["order_type"]),
        asset_id=item["asset_id"],
        time_in_force=TimeInForce(item.get("time_in_force", "gtc")),
        status=OrderStatus(item["status"]),
        reason=item.get("reason"),
        stage=item.get("stage"),
        **values,
    )


OrderFilter = Callable[[Item], bool]


class OrderDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def create_order_op(self, order: Order, extra: Item | None = None) -> Op:
        return Put(keys.ORDERS, {**order_to_item(order), **(extra or {})}, NotExists())

    async def create_order(self, order: Order) -> Order:
        await self.store.transact([self.create_order_op(order)])
        return order

    async def get_order(self, username: str, order_id: str) -> Order:
        """The user's order; another user's order id is simply not found."""
        item = await self.store.get(keys.ORDERS, keys.order_key(username, order_id))
        if item is None:
            raise OrderNotFound()
        return order_from_item(item)

    async def get_order_item(self, username: str, order_id: str) -> Item | None:
        return await self.store.get(keys.ORDERS, keys.order_key(username, order_id))

    def status_change_op(
        self, order: Order, update: OrderUpdate, extra_set: Item | None = None, remove: tuple[str, ...] = ()
    ) -> Op:
        """Move an order along the state machine, only from the status it was read in."""
        if not can_transition(order.status, update.status):
            raise OrderNotCancellable(f"An order that is {order.status.value} cannot become {update.status.value}")
        now = self.clock.now()
        fields: Item = {"status": update.status.value, "updated_at": isoformat(now)}
        for name in ("executed_price", "total_amount", "reason"):
            value = getattr(update, name)
            if value is not None:
                fields[name] = value
        fields.update(extra_set or {})
        return Update(
            keys.ORDERS,
            keys.order_key(order.username, order.order_id),
            set=fields,
            remove=remove,
            condition=Eq("status", order.status.value),
        )

    async def update_order_status(self, order: Order, update: OrderUpdate) -> Order:
        try:
            await self.store.transact([self.status_change_op(order, update)])
        except ConditionFailed as exc:
            raise OrderNotCancellable("The order changed meanwhile") from exc
        return await self.get_order(order.username, order.order_id)

    async def update_order(self, order: Order, changes: dict[str, Any]) -> Order:
        updated = order.model_copy(update={**changes, "updated_at": self.clock.now()})
        item = order_to_item(updated)
        await self.store.transact(
            [
                Update(
                    keys.ORDERS,
                    keys.order_key(order.username, order.order_id),
                    set={name: item[name] for name in (*changes, "updated_at")},
                    condition=Eq("status", order.status.value),
                )
            ]
        )
        return updated

    async def get_orders_by_user(
        self,
        username: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        matches: OrderFilter | None = None,
        descending: bool = True,
    ) -> Page:
        """The user's orders, newest first (or oldest first); a filter reads on until the page is full."""
        pk = keys.user_pk(username)
        prefix = SortKey.prefix(keys.ORDER_PREFIX)
        if matches is None:
            return await self.store.query(keys.ORDERS, pk, sk=prefix, limit=limit, cursor=cursor, descending=descending)
        return await filtered_query(
            self.store, keys.ORDERS, pk, matches, sk=prefix, limit=limit, cursor=cursor, descending=descending
        )

    async def get_orders_by_user_and_asset(
        self, username: str, asset_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return await self.get_orders_by_user(
            username, limit=limit, cursor=cursor, matches=lambda item: item["asset_id"] == asset_id
        )

    async def get_orders_by_user_and_status(
        self, username: str, status: OrderStatus, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return await self.get_orders_by_user(
            username, limit=limit, cursor=cursor, matches=lambda item: item["status"] == status.value
        )
