"""The house inventory of an asset as tests see it: totals over its shards, and a way to set them."""

from __future__ import annotations

from decimal import Decimal

from cnop.common.dao.house_dao import MAX_SHARDS, HouseInventory
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, Op, Update


async def house_totals(store: ItemStore, asset_id: str = "BTC") -> dict[str, Decimal]:
    """The house's units and trade cash of `asset_id`, summed over every house item."""
    state = await HouseInventory(store, MAX_SHARDS).read(asset_id)
    assert state.header is not None and state.items, f"{asset_id} has no house inventory"
    return {"quantity": state.quantity, "cash": state.cash}


async def set_house_units(store: ItemStore, asset_id: str, quantity: Decimal, *, initial: bool = False) -> None:
    """Leave the house `quantity` units of `asset_id` in all (on its first shard, none on the
    others); with `initial`, that is also the number that exists (so the audit still holds)."""
    state = await HouseInventory(store, MAX_SHARDS).read(asset_id)
    ops: list[Op] = [
        Update(keys.INVENTORY, item.key, set={"quantity": quantity if i == 0 else Decimal(0)})
        for i, item in enumerate(state.items)
    ]
    if initial:
        ops.append(Update(keys.INVENTORY, keys.house_inventory_key(asset_id), set={"initial_quantity": quantity}))
    await store.transact(ops)
