"""`cnop db migrate`: the stored-format changes, applied in order, each once per store.

A migration is a named step (`Migration`) that brings items written by an older version to the
format the code writes now. Each one is idempotent (run again, it changes nothing), because a
crash between its last write and its record makes the next run start it over; its rewrites are
guarded (an `Update` under `Exists`, say), so a concurrent change is kept and a deleted item is
not brought back. A step that is applied leaves a record item (`keys.migration_key(name)`), so
`migrate` skips it afterwards; `pending` lists the steps not recorded yet, and `rerun=True` runs
every step again (after old code wrote items during a rolling deploy, say).

To add one: a module beside this one with an `async def run(store, settings) -> int` (the number
of items it changed), appended to `MIGRATIONS` below (the order is the order they run in), and a
test that writes a store the old way, migrates it, and reads it the new way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cnop.common.clock import Clock, isoformat
from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, Put
from cnop.common.migrations import house_shards, ledger_type_index

Step = Callable[[ItemStore, Settings], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    summary: str
    run: Step


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001-ledger-type-index",
        "ledger entries filed under their type, so a type-filtered listing is a key range",
        ledger_type_index.run,
    ),
    Migration(
        "0002-house-shards",
        "each asset's single house-inventory item split into inventory shards, so trades write different items",
        house_shards.run,
    ),
)


@dataclass(frozen=True, slots=True)
class Applied:
    name: str
    summary: str
    changed: int


async def pending(store: ItemStore, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The migrations this store has no record of, in the order they would run."""
    return [m for m in migrations if await store.get(keys.INVENTORY, keys.migration_key(m.name)) is None]


async def migrate(
    store: ItemStore,
    settings: Settings,
    clock: Clock,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    *,
    rerun: bool = False,
) -> list[Applied]:
    """Run every pending migration (every one with `rerun`) in order and record each; what ran
    (nothing when up to date)."""
    applied: list[Applied] = []
    for migration in list(migrations) if rerun else await pending(store, migrations):
        changed = await migration.run(store, settings)
        record = {
            **keys.migration_key(migration.name),
            "name": migration.name,
            "changed": changed,
            "applied_at": isoformat(clock.now()),
        }
        await store.transact([Put(keys.INVENTORY, record)])
        applied.append(Applied(migration.name, migration.summary, changed))
    return applied
