"""0002-house-shards: each asset's single house-inventory item split into inventory shards.

Before: `ASSET#{id} / INVENTORY` held `quantity`, `cash` and `initial_quantity`, and every trade
of the asset wrote it. After: that item is the header (`initial_quantity`, `shards`) and the
units and cash live in `settings.house_shards` shard items (`keys.house_shard_key`), the units
split evenly at the asset's scale and the cash on shard 0 (decision 0025). One transaction per
asset (`HouseInventory.split_single_item`), guarded on the values read, so a trade that lands
meanwhile makes it read again; an asset already split is skipped.
"""

from __future__ import annotations

from cnop.common.config import Settings
from cnop.common.dao.house_dao import HouseInventory
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, query_all


async def run(store: ItemStore, settings: Settings) -> int:
    house = HouseInventory(store, settings.house_shards)
    changed = 0
    async for asset in query_all(store, keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX):
        if await house.split_single_item(asset["asset_id"], int(asset.get("scale", 8))):
            changed += 1
    return changed
