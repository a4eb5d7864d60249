"""Store format migrations (`cnop db migrate`): each brings the items written before a format
change to the format the code writes now.

A migration is registered once in `MIGRATIONS`, in order, with an id that never changes. Every
migration is idempotent (it rewrites only what is not yet in the new format, each rewrite an
`Update` guarded by `Exists`, so an item deleted meanwhile is not brought back and a concurrent
change of another attribute is kept), so running it again, or after a crash half-way, is safe.
An applied migration is recorded as one item (`keys.migration_key`), and `migrate` runs those not
recorded yet; `rerun=True` runs every migration again (after old code wrote items, say).

Migrations use the storage port only, so they run on both engines alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cnop.common.clock import isoformat
from cnop.common.config import Settings
from cnop.common.dao.house_dao import HouseInventory
from cnop.common.database import keys
from cnop.common.database.store import Exists, ItemStore, Op, Put, SortKey, Update, query_all

BATCH = 100  # updates per transaction (the store's limit)


@dataclass(frozen=True, slots=True)
class Migration:
    id: str
    summary: str
    run: Callable[[ItemStore], Awaitable[int]]  # the number of items it changed


@dataclass(frozen=True, slots=True)
class Applied:
    migration: Migration
    changed: int


async def _usernames(store: ItemStore) -> list[str]:
    """Every registered user (their profiles, on the users index)."""
    return [
        str(item["username"])
        async for item in query_all(store, keys.USERS, keys.USERS_INDEX_PK, index=keys.USERS_INDEX)
    ]


async def backfill_ledger_type_index(store: ItemStore) -> int:
    """0001: file every ledger entry under its type (`keys.ledger_type_index`)."""
    changed = 0
    for username in await _usernames(store):
        ops: list[Op] = []
        async for entry in query_all(store, keys.USERS, keys.user_pk(username), sk=SortKey.prefix(keys.TXN_PREFIX)):
            wanted = keys.ledger_type_index(username, entry["transaction_type"], entry["sk"])
            if any(entry.get(name) != value for name, value in wanted.items()):
                ops.append(Update(keys.USERS, {"pk": entry["pk"], "sk": entry["sk"]}, set=wanted, condition=Exists()))
            if len(ops) == BATCH:
                await store.transact(ops)
                changed, ops = changed + len(ops), []
        if ops:
            await store.transact(ops)
            changed += len(ops)
    return changed


async def split_house_items(store: ItemStore) -> int:
    """0002: each asset's single house-inventory item split into `CNOP_HOUSE_SHARDS` shards
    (`HouseInventory.split_single_item`, decision 0025)."""
    house = HouseInventory(store, Settings().house_shards)
    changed = 0
    async for asset in query_all(store, keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX):
        if await house.split_single_item(asset["asset_id"], int(asset.get("scale", 8))):
            changed += 1
    return changed


MIGRATIONS: list[Migration] = [
    Migration(
        "0001-ledger-type-index",
        "ledger entries filed under their type, so a type-filtered listing is a key range",
        backfill_ledger_type_index,
    ),
    Migration(
        "0002-house-shards",
        "each asset's single house-inventory item split into inventory shards, so trades write different items",
        split_house_items,
    ),
]


async def applied_ids(store: ItemStore) -> set[str]:
    return {str(item["sk"]) async for item in query_all(store, keys.USERS, keys.MIGRATIONS_PK)}


async def pending(store: ItemStore, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    done = await applied_ids(store)
    return [m for m in migrations if m.id not in done]


async def migrate(
    store: ItemStore,
    *,
    rerun: bool = False,
    migrations: Sequence[Migration] = MIGRATIONS,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Applied]:
    """Run the pending migrations (every one with `rerun`) in order; each is recorded when done."""
    todo = list(migrations) if rerun else await pending(store, migrations)
    results = []
    for migration in todo:
        changed = await migration.run(store)
        record = {
            **keys.migration_key(migration.id),
            "summary": migration.summary,
            "applied_at": isoformat(now()),
            "changed": changed,
        }
        await store.transact([Put(keys.USERS, record)])
        results.append(Applied(migration, changed))
    return results
