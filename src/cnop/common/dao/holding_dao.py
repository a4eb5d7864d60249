"""HoldingDAO: a user's units of each asset, and the asset transactions that explain them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    Condition,
    Eq,
    Ge,
    Item,
    ItemStore,
    NotExists,
    Op,
    Page,
    Put,
    SortKey,
    Update,
    query_all,
)
from cnop.common.entities.holding import Holding

ZERO = Decimal(0)


def holding_from_item(item: Item) -> Holding:
    return Holding(
        username=item["username"],
        asset_id=item["asset_id"],
        available=item["available"],
        held=item["held"],
        cost_basis=item["cost_basis"],
        created_at=parse_isoformat(item["created_at"]),
        updated_at=parse_isoformat(item["updated_at"]),
    )


class HoldingDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def get_holding_item(self, username: str, asset_id: str) -> Item | None:
        return await self.store.get(keys.USERS, keys.holding_key(username, asset_id))

    async def get_holding(self, username: str, asset_id: str) -> Holding | None:
        item = await self.get_holding_item(username, asset_id)
        return holding_from_item(item) if item is not None else None

    async def get_holdings(self, username: str) -> list[Holding]:
        prefix = SortKey.prefix(keys.HOLDING_PREFIX)
        return [
            holding_from_item(item)
            async for item in query_all(self.store, keys.USERS, keys.user_pk(username), sk=prefix)
        ]

    def change_op(
        self,
        username: str,
        asset_id: str,
        now: datetime,
        *,
        available: Decimal = ZERO,
        held: Decimal = ZERO,
        cost_basis: Decimal = ZERO,
        expected_version: Decimal | None = None,
    ) -> Op:
        """Move units, guarded so neither available nor held (nor the cost basis) goes below zero.

        Every change bumps `version`; a sell that recomputes the cost basis from a snapshot
        passes `expected_version` so it applies only to the holding it read.
        """
        guards: list[Condition] = []
        if available < 0:
            guards.append(Ge("available", -available))
        if held < 0:
            guards.append(Ge("held", -held))
        if cost_basis < 0:
            guards.append(Ge("cost_basis", -cost_basis))
        if expected_version is not None:
            guards.append(Eq("version", expected_version))
        stamp = isoformat(now)
        add: dict[str, Decimal] = {
            "available": available,
            "held": held,
            "cost_basis": cost_basis,
            "version": Decimal(1),
        }
        return Update(
            keys.USERS,
            keys.holding_key(username, asset_id),
            set={"username": username, "asset_id": asset_id, "updated_at": stamp},
            add=add,
            init={"created_at": stamp},
            condition=And(*guards) if guards else None,
        )

    def asset_transaction_op(
        self,
        *,
        username: str,
        asset_id: str,
        transaction_id: str,
        transaction_type: str,
        quantity: Decimal,
        available_change: Decimal,
        held_change: Decimal,
        price: Decimal | None,
        total: Decimal | None,
        order_id: str | None,
        now: datetime,
    ) -> Op:
        return Put(
            keys.ORDERS,
            {
                **keys.asset_txn_key(username, asset_id, transaction_id),
                "transaction_id": transaction_id,
                "username": username,
                "asset_id": asset_id,
                "transaction_type": transaction_type,
                "quantity": quantity,
                "available_change": available_change,
                "held_change": held_change,
                "price": price,
                "total": total,
                "order_id": order_id,
                "status": "completed",
                "created_at": isoformat(now),
            },
            NotExists(),
        )

    async def get_asset_transactions(
        self, username: str, asset_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return await self.store.query(
            keys.ORDERS,
            keys.user_pk(username),
            sk=SortKey.prefix(keys.asset_txn_prefix(asset_id)),
            limit=limit,
            cursor=cursor,
            descending=True,
        )
