"""HoldingDAO: a user's units of each asset, and the asset transactions that explain them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.dao.balance_dao import balance_from_item, balance_item
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    Condition,
    Eq,
    Ge,
    Item,
    ItemStore,
    Key,
    NotExists,
    Op,
    Page,
    Put,
    SortKey,
    Update,
    query_all,
)
from cnop.common.entities.balance import Balance
from cnop.common.entities.holding import AssetTransaction, Holding

ZERO = Decimal(0)


def asset_transaction_to_item(txn: AssetTransaction) -> Item:
    return {
        **keys.asset_txn_key(txn.username, txn.asset_id, txn.transaction_id),
        "transaction_id": txn.transaction_id,
        "username": txn.username,
        "asset_id": txn.asset_id,
        "transaction_type": txn.transaction_type,
        "quantity": txn.quantity,
        "available_change": txn.available_change,
        "held_change": txn.held_change,
        "price": txn.price,
        "total": txn.total,
        "order_id": txn.order_id,
        "status": txn.status,
        "created_at": isoformat(txn.created_at),
    }


def asset_transaction_from_item(item: Item) -> AssetTransaction:
    return AssetTransaction(
        transaction_id=item["transaction_id"],
        username=item["username"],
        asset_id=item["asset_id"],
        transaction_type=item["transaction_type"],
        quantity=item["quantity"],
        available_change=item["available_change"],
        held_change=item["held_change"],
        price=item.get("price"),
        total=item.get("total"),
        order_id=item.get("order_id"),
        status=item["status"],
        created_at=parse_isoformat(item["created_at"]),
    )


def holding_from_item(item: Item) -> Holding:
    return Holding(
        username=item["username"],
        asset_id=item["asset_id"],
        available=item["available"],
        held=item["held"],
        cost_basis=item["cost_basis"],
        created_at=parse_isoformat(item["created_at"]),
        updated_at=parse_isoformat(item["updated_at"]),
        version=item.get("version", ZERO),
    )


class HoldingDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def get_holding(self, username: str, asset_id: str) -> Holding | None:
        item = await self.store.get(keys.USERS, keys.holding_key(username, asset_id))
        return holding_from_item(item) if item is not None else None

    @staticmethod
    def holding_ref(username: str, asset_id: str) -> tuple[str, Key]:
        """The table and key of a holding (to read it inside a planned transaction)."""
        return keys.USERS, keys.holding_key(username, asset_id)

    @staticmethod
    def from_item(item: Item | None) -> Holding | None:
        return holding_from_item(item) if item is not None else None

    async def get_holdings(self, username: str) -> list[Holding]:
        prefix = SortKey.prefix(keys.HOLDING_PREFIX)
        return [
            holding_from_item(item)
            async for item in query_all(self.store, keys.USERS, keys.user_pk(username), sk=prefix)
        ]

    async def get_balance_and_holdings(self, username: str) -> tuple[Balance, list[Holding]]:
        """The user's cash balance and every holding, in one query (`keys.BALANCE_AND_HOLDINGS`).

        A user without a balance item (never the case for a registered user) has a zero balance,
        as `BalanceDAO.get_balance` gives.
        """
        low, high = keys.BALANCE_AND_HOLDINGS
        balance: Balance | None = None
        holdings: list[Holding] = []
        sk = SortKey.between(low, high)
        async for item in query_all(self.store, keys.USERS, keys.user_pk(username), sk=sk):
            sort_key = keys.sort_key_of(item)
            if sort_key == keys.BALANCE_USD:
                balance = balance_from_item(item)
            elif sort_key.startswith(keys.HOLDING_PREFIX):
                holdings.append(holding_from_item(item))
        if balance is None:
            balance = balance_from_item(balance_item(username, self.clock.now()))
        return balance, holdings

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

    def asset_transaction_op(self, txn: AssetTransaction) -> Op:
        return Put(keys.ORDERS, asset_transaction_to_item(txn), NotExists())

    async def get_asset_transactions(
        self, username: str, asset_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AssetTransaction]:
        """The user's movements of one asset, newest first."""
        page = await self.store.query(
            keys.ORDERS,
            keys.user_pk(username),
            sk=SortKey.prefix(keys.asset_txn_prefix(asset_id)),
            limit=limit,
            cursor=cursor,
            descending=True,
        )
        return Page([asset_transaction_from_item(item) for item in page.items], page.next_cursor)

    async def get_all_asset_transactions(
        self, username: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AssetTransaction]:
        """The user's movements of every asset, by asset and, within one asset, oldest first."""
        page = await self.store.query(
            keys.ORDERS,
            keys.user_pk(username),
            sk=SortKey.prefix(keys.ASSET_TXN_PREFIX),
            limit=limit,
            cursor=cursor,
        )
        return Page([asset_transaction_from_item(item) for item in page.items], page.next_cursor)
