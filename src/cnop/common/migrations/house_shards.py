"""0001-house-shards: each asset's single house-inventory item split into inventory shards.

Before: `ASSET#{id} / INVENTORY` held `quantity`, `cash` and `initial_quantity`, and every trade
of the asset wrote it. After: that item is the header (`initial_quantity`, `shards`) and the
units and cash live in `settings.house_shards` shard items (`keys.house_shard_key`), the units
split evenly at the asset's scale and the cash on shard 0 (decision 0025). One transaction per
asset, guarded by the values read, so a trade that lands meanwhile makes it read again.
"""

from __future__ import annotations

from decimal import Decimal

from cnop.common.config import Settings
from cnop.common.dao.house_dao import HouseInventory, shard_item, split
from cnop.common.database import keys
from cnop.common.database.store import And, AttrNotExists, Eq, ItemStore, NotExists, Op, Put, Update, query_all
from cnop.common.exceptions import ConditionFailed, StoreError

ATTEMPTS = 8


async def split_house_item(store: ItemStore, asset_id: str, scale: int, shards: int) -> bool:
    """Split one asset's legacy house item; False when it is already split (or missing)."""
    for _ in range(ATTEMPTS):
        header = await store.get(keys.INVENTORY, keys.house_inventory_key(asset_id))
        if header is None or "quantity" not in header:
            return False
        quantity, cash = Decimal(header["quantity"]), Decimal(header.get("cash", Decimal("0.00")))
        unchanged = And(Eq("quantity", quantity), Eq("cash", cash), AttrNotExists("shards"))
        ops: list[Op] = [
            Update(
                keys.INVENTORY,
                keys.house_inventory_key(asset_id),
                set={"shards": shards},
                remove=("quantity", "cash"),
                condition=unchanged,
            ),
            *(
                Put(keys.INVENTORY, shard_item(asset_id, k, share, cash if k == 0 else Decimal("0.00")), NotExists())
                for k, share in enumerate(split(quantity, shards, scale))
            ),
        ]
        try:
            await store.transact(ops)
        except ConditionFailed:
            continue  # a trade moved the item since we read it
        return True
    raise StoreError(f"{asset_id}: the house item kept changing; run the migration again")


async def run(store: ItemStore, settings: Settings) -> int:
    house = HouseInventory(store, settings.house_shards)
    changed = 0
    async for asset in query_all(store, keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX):
        if await split_house_item(store, asset["asset_id"], int(asset.get("scale", 8)), house.shards):
            changed += 1
    return changed
