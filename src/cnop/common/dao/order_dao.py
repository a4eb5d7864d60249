"""OrderDAO: orders on the orders table (newest first per user), with the seed's methods
(docs/architecture.md: Names kept from the seed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    Condition,
    Eq,
    Item,
    ItemStore,
    NotExists,
    Page,
    Put,
    SortKey,
    Update,
    filtered_query,
    query_all,
)
from cnop.common.database.transaction import Leg, Legs
from cnop.common.entities.order import (
    Order,
    OrderSide,
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


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which of a user's orders a list shows; every field left None matches everything.

    `open` is True for orders not in a final status, False for final ones; `status` is one
    status; `created_after` is exclusive and `created_until` inclusive.
    """

    asset_ids: frozenset[str] | None = None
    order_type: OrderType | None = None
    side: OrderSide | None = None
    status: OrderStatus | None = None
    open: bool | None = None
    created_after: datetime | None = None
    created_until: datetime | None = None
    client_order_id: str | None = None

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__slots__)

    def matches_item(self, item: Item) -> bool:
        """Judge a stored order without decoding all of it (the list reads on past misses)."""
        if self.asset_ids is not None and item["asset_id"] not in self.asset_ids:
            return False
        if self.order_type is not None and item["order_type"] != self.order_type.value:
            return False
        if self.side is not None and OrderType(item["order_type"]).side is not self.side:
            return False
        if self.status is not None and item["status"] != self.status.value:
            return False
        if self.open is not None and OrderStatus(item["status"]).is_final is self.open:
            return False
        if self.client_order_id is not None and item.get("client_order_id") != self.client_order_id:
            return False
        if self.created_after is not None or self.created_until is not None:
            created = parse_isoformat(item["created_at"])
            if self.created_after is not None and created <= self.created_after:
                return False
            if self.created_until is not None and created > self.created_until:
                return False
        return True


# The index attributes a queued order carries (trigger, expiry, trailing), all removed when it ends.
_RESTING_ATTRIBUTES = tuple(name for spec in (keys.GSI1, keys.GSI2, keys.GSI3) for name in (spec.pk_attr, spec.sk_attr))


@dataclass(frozen=True, slots=True)
class RestingIndex:
    """Where a queued order waits in the trigger index: `direction` (`above`/`below`) and price."""

    direction: str
    trigger: Decimal


def _resting_attributes(order: Order, index: RestingIndex) -> Item:
    attrs: Item = {
        keys.GSI2.pk_attr: keys.trigger_pk(order.asset_id, index.direction),
        keys.GSI2.sk_attr: index.trigger,
    }
    if order.expires_at is not None:
        attrs[keys.GSI1.pk_attr] = keys.EXPIRY_INDEX_PK
        attrs[keys.GSI1.sk_attr] = isoformat(order.expires_at)
    if order.trail_anchor is not None:
        attrs[keys.GSI3.pk_attr] = keys.trail_pk(order.asset_id, order.side.value)
        attrs[keys.GSI3.sk_attr] = order.trail_anchor
    return attrs


class OrderDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create_order(self, order: Order, index: RestingIndex | None = None, *, tx: Legs | None = None) -> Order:
        """Store a new order; a queued one is indexed where its trigger waits. With `tx`, the
        write joins the use case's transaction (leg `order`) instead of applying alone."""
        extra = _resting_attributes(order, index) if index is not None else {}
        op = Put(keys.ORDERS, {**order_to_item(order), **extra}, NotExists())
        if tx is not None:
            tx.add(Leg.ORDER, op)
        else:
            await self.store.transact([op])
        return order

    async def get_order(self, username: str, order_id: str) -> Order:
        """The user's order; another user's order id is simply not found."""
        order = await self.find_order(username, order_id)
        if order is None:
            raise OrderNotFound()
        return order

    async def find_order(self, username: str, order_id: str) -> Order | None:
        item = await self.store.get(keys.ORDERS, keys.order_key(username, order_id))
        return order_from_item(item) if item is not None else None

    async def update_order_status(
        self,
        order: Order,
        update: OrderUpdate,
        *,
        trigger_seen: Decimal | None = None,
        tx: Legs | None = None,
    ) -> Order:
        """Move an order along the state machine (`entities/order.py: TRANSITIONS`), only from the
        status it was read in and, for a queued order, only while it waits at the trigger the
        caller saw (`trigger_seen`: a trailing stop may have moved since). An order that ends
        leaves the resting indexes. Returns the order as changed.

        A move the state machine does not allow raises `OrderNotCancellable` before anything is
        written. With `tx`, the write joins the use case's transaction (leg `order`; a failed
        guard is that transaction's `GuardFailed`); alone, a failed guard is `OrderNotCancellable`.
        """
        if not can_transition(order.status, update.status):
            raise OrderNotCancellable(f"An order that is {order.status.value} cannot become {update.status.value}")
        if update.updated_at is None:
            update = update.model_copy(update={"updated_at": self.clock.now()})
        assert update.updated_at is not None
        fields: Item = {"status": update.status.value, "updated_at": isoformat(update.updated_at)}
        for name in ("executed_price", "total_amount", "realized_pnl", "reason"):
            value = getattr(update, name)
            if value is not None:
                fields[name] = value
        for name in ("executed_at", "cancelled_at"):
            moment = getattr(update, name)
            if moment is not None:
                fields[name] = isoformat(moment)
        guards: list[Condition] = [Eq("status", order.status.value)]
        if trigger_seen is not None:
            guards.append(Eq(keys.GSI2.sk_attr, trigger_seen))
        op = Update(
            keys.ORDERS,
            keys.order_key(order.username, order.order_id),
            set=fields,
            remove=_RESTING_ATTRIBUTES if update.status.is_final else (),
            condition=And(*guards),
        )
        if tx is not None:
            tx.add(Leg.ORDER, op)
            return update.applied_to(order)
        try:
            await self.store.transact([op])
        except ConditionFailed as exc:
            raise OrderNotCancellable("The order changed meanwhile") from exc
        return await self.get_order(order.username, order.order_id)

    async def update_order(
        self,
        order: Order,
        changes: dict[str, Any],
        *,
        index: RestingIndex | None = None,
        tx: Legs | None = None,
    ) -> Order | None:
        """Change fields of an order other than its status, only while it is as it was read: in
        the same status, and with every changed field still holding the value read. `index`
        re-indexes a queued order where its trigger now waits. Returns the order as changed, or
        None when it changed meanwhile (with `tx`, a failed guard is the transaction's
        `GuardFailed` on leg `order` instead)."""
        updated = order.model_copy(update={**changes, "updated_at": self.clock.now()})
        item = order_to_item(updated)
        fields = {_STORED_NAME.get(name, name): item[_STORED_NAME.get(name, name)] for name in (*changes, "updated_at")}
        if index is not None:
            fields.update(_resting_attributes(updated, index))
        guards: list[Condition] = [Eq("status", order.status.value)]
        read = order_to_item(order)
        for name in changes:
            stored = _STORED_NAME.get(name, name)
            if read[stored] is not None:
                guards.append(Eq(stored, read[stored]))
        op = Update(keys.ORDERS, keys.order_key(order.username, order.order_id), set=fields, condition=And(*guards))
        if tx is not None:
            tx.add(Leg.ORDER, op)
            return updated
        try:
            await self.store.transact([op])
        except ConditionFailed:
            return None
        return updated

    # --- resting orders: the trigger engine's steps and queries --------------------------------

    async def move_trail(self, order: Order, anchor: Decimal, stop: Decimal, direction: str) -> Order | None:
        """A trailing stop follows a new best price: `anchor`, and `stop` where it now waits
        (`direction` of the market). Applies only while the order is queued at the anchor it was
        read with; None otherwise."""
        if order.status is not OrderStatus.QUEUED:
            return None
        return await self.update_order(
            order, {"trail_anchor": anchor, "stop_price": stop}, index=RestingIndex(direction, stop)
        )

    async def convert_stop_limit(self, order: Order, index: RestingIndex) -> Order | None:
        """A stop-limit whose stop was crossed waits from now on as a limit order at `index`
        (same reservation). Applies only once, while queued at its stop stage; None otherwise."""
        if order.status is not OrderStatus.QUEUED or order.stage != "stop":
            return None
        return await self.update_order(order, {"stage": "limit"}, index=index)

    async def get_orders_by_trigger(self, asset_id: str, direction: str, trigger_range: SortKey) -> list[Order]:
        """Queued orders of one asset waiting `direction` of the market, with triggers in the range."""
        pk = keys.trigger_pk(asset_id, direction)
        return [
            order_from_item(item)
            async for item in query_all(self.store, keys.ORDERS, pk, sk=trigger_range, index=keys.GSI2.name)
        ]

    async def get_trailing_orders(self, asset_id: str, side: OrderSide, anchor_range: SortKey) -> list[Order]:
        """Queued trailing stops of one asset and side whose best price seen is in the range."""
        pk = keys.trail_pk(asset_id, side.value)
        return [
            order_from_item(item)
            async for item in query_all(self.store, keys.ORDERS, pk, sk=anchor_range, index=keys.GSI3.name)
        ]

    async def get_orders_due(self, now: datetime, *, limit: int = 100) -> list[Order]:
        """Queued orders whose good-till time is at or before `now` (at most `limit`)."""
        page = await self.store.query(
            keys.ORDERS, keys.EXPIRY_INDEX_PK, sk=SortKey.le(isoformat(now)), index=keys.GSI1.name, limit=limit
        )
        return [order_from_item(item) for item in page.items]

    async def get_queued_orders(self, username: str) -> list[Order]:
        """Every queued order of a user (for the audit and the events stream)."""
        result: list[Order] = []
        cursor = None
        while True:
            page = await self.get_orders_by_user_and_status(username, OrderStatus.QUEUED, limit=100, cursor=cursor)
            result += page.items
            cursor = page.next_cursor
            if cursor is None:
                return result

    async def get_orders_by_user(
        self,
        username: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        where: OrderFilter | None = None,
        descending: bool = True,
    ) -> Page[Order]:
        """The user's orders, newest first (or oldest first); a filter reads on until the page is full."""
        pk = keys.user_pk(username)
        prefix = SortKey.prefix(keys.ORDER_PREFIX)
        if where is None or where.is_empty:
            page = await self.store.query(keys.ORDERS, pk, sk=prefix, limit=limit, cursor=cursor, descending=descending)
        else:
            page = await filtered_query(
                self.store,
                keys.ORDERS,
                pk,
                where.matches_item,
                sk=prefix,
                limit=limit,
                cursor=cursor,
                descending=descending,
            )
        return Page([order_from_item(item) for item in page.items], page.next_cursor)

    async def get_orders_by_user_and_asset(
        self, username: str, asset_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Order]:
        return await self.get_orders_by_user(
            username, limit=limit, cursor=cursor, where=OrderFilter(asset_ids=frozenset({asset_id}))
        )

    async def get_orders_by_user_and_status(
        self, username: str, status: OrderStatus, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Order]:
        return await self.get_orders_by_user(username, limit=limit, cursor=cursor, where=OrderFilter(status=status))
