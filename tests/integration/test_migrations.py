"""`cnop db migrate` on both engines: a store written before a format change reads the new way.

0002-house-shards: before it, each asset had one house-inventory item (`ASSET#{id} / INVENTORY`
with `quantity`, `cash` and `initial_quantity`) that every trade wrote. The store below is
written that way, item for item, as the code before the change wrote it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from cnop.audit import run_audit
from cnop.cli import app
from cnop.common.clock import FakeClock, isoformat
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import asset_to_item
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.house_dao import MAX_SHARDS, HouseInventory
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, ItemStore, NotExists, Op, Put, Update
from cnop.common.database.transaction import Leg, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderStatus, OrderType
from cnop.common.ids import new_id
from cnop.common.migrations import migrate, pending
from cnop.services.order.settlement import Settlement

D = Decimal


async def write_pre_shard_asset(store: ItemStore, asset_id: str, quantity: str, cash: str, initial: str) -> None:
    """An asset and its single house item, as stored before 0002-house-shards."""
    now = FakeClock().now()
    asset = Asset(asset_id=asset_id, name=asset_id, symbol=asset_id, scale=8, created_at=now, updated_at=now)
    legacy = {
        **keys.house_inventory_key(asset_id),
        "asset_id": asset_id,
        "quantity": D(quantity),
        "initial_quantity": D(initial),
        "cash": D(cash),
    }
    await store.transact([Put(keys.INVENTORY, asset_to_item(asset), NotExists()), Put(keys.INVENTORY, legacy)])


async def write_pre_shard_holder(store: ItemStore, username: str, asset_id: str, units: str, paid: str) -> None:
    """A user who bought `units` from that house item for `paid` USD (so the books balance)."""
    clock = FakeClock()
    now = clock.now()
    balances, holdings = BalanceDAO(store, clock), HoldingDAO(store, clock)
    profile = {
        **keys.user_key(username),
        keys.GSI1.pk_attr: keys.USERS_INDEX_PK,
        keys.GSI1.sk_attr: username,
        "username": username,
        "created_at": isoformat(now),
    }
    joined = Legs().add(Leg.USER, Put(keys.USERS, profile))
    await balances.create_balance(username, tx=joined)
    await joined.commit(store)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username=username,
        transaction_type=TransactionType.DEPOSIT,
        amount=D(paid),
        available_change=D(paid),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    order = Order(
        order_id=new_id(),
        username=username,
        order_type=OrderType.MARKET_BUY,
        asset_id=asset_id,
        quantity=D(units),
        status=OrderStatus.COMPLETED,
        executed_price=D(paid) / D(units),
        total_amount=D(paid),
        executed_at=now,
        created_at=now,
        updated_at=now,
    )
    # The trade's legs, on a house that writes the single item as the code before did.
    settlement = Settlement(store, balances, holdings, LegacyHouse())
    legs = Legs()
    await OrderDAO(store, clock).create_order(order, tx=legs)
    await settlement.settle_buy(order, legs)


class LegacyHouse:
    """The house leg as written before 0002-house-shards: every trade on the single house item."""

    def trade_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op]:
        guard = Ge("quantity", -quantity) if quantity < 0 else None
        key = keys.house_inventory_key(asset_id)
        return [Update(keys.INVENTORY, key, add={"quantity": quantity, "cash": cash}, condition=guard)]

    async def cover_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op] | None:
        return None


async def house_items(store: ItemStore, asset_id: str) -> dict[str, dict[str, object]]:
    state = await HouseInventory(store, MAX_SHARDS).read(asset_id)
    return {item.key["pk"]: {"quantity": item.quantity, "cash": item.cash} for item in state.items}


async def test_migrating_a_pre_shard_store_splits_each_house_item_into_shards(store: ItemStore) -> None:
    await write_pre_shard_asset(store, "BTC", "500", "0.00", "500")
    await write_pre_shard_asset(store, "ETH", "10000.00000001", "0.00", "10000.00000001")
    await write_pre_shard_holder(store, "alice", "BTC", "0.5", "25000.00")
    await write_pre_shard_holder(store, "bob", "ETH", "1", "3000.00")
    assert (await run_audit(store)).ok, (await run_audit(store)).violations
    settings, clock = Settings(house_shards=4), FakeClock()

    assert "0002-house-shards" in [m.name for m in await pending(store)]
    applied = {a.name: a.changed for a in await migrate(store, settings, clock)}
    assert applied["0002-house-shards"] == 2

    header = await store.get(keys.INVENTORY, keys.house_inventory_key("BTC"))
    assert header is not None
    assert {k: header[k] for k in header if k not in ("pk", "sk")} == {
        "asset_id": "BTC",
        "initial_quantity": D("500"),
        "shards": 4,
    }
    assert await house_items(store, "BTC") == {
        "HOUSE#BTC#00": {"quantity": D("124.875"), "cash": D("25000.00")},
        "HOUSE#BTC#01": {"quantity": D("124.875"), "cash": D("0.00")},
        "HOUSE#BTC#02": {"quantity": D("124.875"), "cash": D("0.00")},
        "HOUSE#BTC#03": {"quantity": D("124.875"), "cash": D("0.00")},
    }
    # 9999.00000001 in four at 8 places: the remainder of the split stays on shard 0.
    eth = await house_items(store, "ETH")
    assert [v["quantity"] for v in eth.values()] == [D("2499.75000001"), D("2499.75"), D("2499.75"), D("2499.75")]
    assert sum((v["cash"] for v in eth.values()), D(0)) == D("3000.00")
    report = await run_audit(store)
    assert report.ok, report.violations
    assert report.facts["house items (shards)"] == "8"

    # Recorded: a second run changes nothing.
    assert await pending(store) == []
    assert await migrate(store, settings, clock) == []
    assert {a.name: a.changed for a in await migrate(store, settings, clock, rerun=True)}["0002-house-shards"] == 0
    assert await house_items(store, "BTC") == {
        f"HOUSE#BTC#0{k}": {"quantity": D("124.875"), "cash": D("25000.00") if k == 0 else D("0.00")} for k in range(4)
    }


async def test_an_unmigrated_store_still_trades_on_its_single_house_item(store: ItemStore) -> None:
    """A process of the new version on a store not migrated yet: its trades find the legacy
    item (the shard they hash to does not exist) and the books stay exact."""
    await write_pre_shard_asset(store, "BTC", "2", "0.00", "2")
    clock = FakeClock()
    balances, holdings = BalanceDAO(store, clock), HoldingDAO(store, clock)
    settlement = Settlement(store, balances, holdings, HouseInventory(store, 8))
    await write_pre_shard_holder(store, "alice", "BTC", "0.5", "25000.00")
    now = clock.now()
    order = Order(
        order_id=new_id(),
        username="alice",
        order_type=OrderType.MARKET_SELL,
        asset_id="BTC",
        quantity=D("0.2"),
        status=OrderStatus.COMPLETED,
        executed_price=D("50000"),
        total_amount=D("10000.00"),
        executed_at=now,
        created_at=now,
        updated_at=now,
    )

    async def filled(basis_out: Decimal, legs: Legs) -> Order:
        sold = order.model_copy(update={"realized_pnl": D("10000.00") - basis_out})
        return await OrderDAO(store, clock).create_order(sold, tx=legs)

    await settlement.settle_sell("alice", "BTC", D("0.2"), filled, from_held=False)
    assert await house_items(store, "BTC") == {"ASSET#BTC": {"quantity": D("1.7"), "cash": D("15000.00")}}
    assert (await run_audit(store)).ok


def test_the_command_migrates_a_store_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"

    async def write() -> None:
        store = SQLiteStore(str(path))
        await store.create_tables()
        await write_pre_shard_asset(store, "BTC", "500", "0.00", "500")
        await store.close()

    async def read() -> dict[str, dict[str, object]]:
        store = SQLiteStore(str(path))
        try:
            return await house_items(store, "BTC")
        finally:
            await store.close()

    asyncio.run(write())
    runner = CliRunner()
    env = {"CNOP_HOUSE_SHARDS": "2"}
    first = runner.invoke(app, ["db", "migrate", "--store", f"sqlite:///{path}"], env=env)
    assert first.exit_code == 0, first.output
    assert "applied 0002-house-shards" in first.output
    assert asyncio.run(read()) == {
        "HOUSE#BTC#00": {"quantity": D("250"), "cash": D("0.00")},
        "HOUSE#BTC#01": {"quantity": D("250"), "cash": D("0.00")},
    }
    again = runner.invoke(app, ["db", "migrate", "--store", f"sqlite:///{path}"], env=env)
    assert again.exit_code == 0 and "nothing to migrate" in again.output
