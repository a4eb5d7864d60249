"""HouseInventory: the house's units and trade cash of each asset, split into inventory shards.

On DynamoDB two transactions that write one item at the same time cancel each other
(`TransactionConflict`), and one item takes a bounded write rate; a single house item per asset
would make every trade of that asset, fleet-wide, queue on it. So the house side of an asset is
N shard items (`keys.house_shard_key`, each its own partition), and a trade writes one of them
(docs/decisions/0025-house-inventory-shards.md):

- the header (`keys.house_inventory_key`) holds what never moves: `initial_quantity`, the units
  that exist, and `shards`, how many shard items the asset has. Trades never write it. (Before
  the migration `0002-house-shards` it was the only house item and held `quantity` and `cash`
  too; the readers below still count such a legacy item, so an old store trades until migrated.)
- a shard holds `quantity` and `cash`. A trade takes the next shard in turn (round robin from a
  random start per process), so concurrent trades spread over the shards without reading
  anything first (`trade_ops`); a buy
  is guarded so the shard never hands out units it lacks, a sell so it lands on a shard that
  exists (a trade never creates a shard).
- when that guard fails, `cover_ops` reads every house item and takes the units from one shard
  that holds enough, or from several in the same transaction: a buy is refused for want of
  inventory only when the house as a whole lacks the units, as with one item.
- `rebalance` moves units between the shards of an asset (a background task, `HouseRebalancer`)
  so each keeps about an equal share, and grows the asset to the configured shard count.

The audit (`cnop audit`) adds every house item of an asset: house + users = initial quantity.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from cnop.common.config import DEFAULT_HOUSE_SHARDS
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    AttrNotExists,
    Eq,
    Exists,
    Ge,
    Item,
    ItemStore,
    Key,
    NotExists,
    Op,
    Put,
    Update,
)
from cnop.common.entities.asset import Asset
from cnop.common.exceptions import ConditionFailed, StoreError
from cnop.common.shared.lease import FencedLease

log = logging.getLogger(__name__)

ZERO = Decimal(0)
NO_CASH = Decimal("0.00")
MAX_SHARDS = 64  # an asset's creation writes the header and every shard in one transaction
# A shard is topped up when it holds less than this part of an equal share.
LOW_SHARE = Decimal("0.5")
SPLIT_ATTEMPTS = 8


def split(quantity: Decimal, parts: int, scale: int) -> list[Decimal]:
    """`quantity` in `parts` equal shares at `scale` places; the remainder goes to the first."""
    quantum = Decimal(1).scaleb(-scale)
    share = (quantity / parts).quantize(quantum, rounding=ROUND_DOWN)
    return [quantity - share * (parts - 1), *([share] * (parts - 1))]


@dataclass(frozen=True, slots=True)
class HouseItem:
    """One item that holds house units: a shard, or a not yet migrated single house item."""

    key: Key
    shard: int | None  # None: the legacy single item (the header of an unmigrated store)
    quantity: Decimal
    cash: Decimal


@dataclass(frozen=True, slots=True)
class HouseState:
    header: Item | None
    items: list[HouseItem]

    @property
    def quantity(self) -> Decimal:
        return sum((item.quantity for item in self.items), ZERO)

    @property
    def cash(self) -> Decimal:
        return sum((item.cash for item in self.items), ZERO)

    @property
    def shards(self) -> int:
        return 0 if self.header is None else int(self.header.get("shards", 0))


def shard_item(asset_id: str, shard: int, quantity: Decimal, cash: Decimal = NO_CASH) -> Item:
    return {
        **keys.house_shard_key(asset_id, shard),
        "asset_id": asset_id,
        "shard": shard,
        "quantity": quantity,
        "cash": cash,
    }


class HouseInventory:
    """The house side of trades over `shards` inventory shards per asset (see the module)."""

    def __init__(self, store: ItemStore, shards: int = DEFAULT_HOUSE_SHARDS) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"an asset has 1 to {MAX_SHARDS} house shards")
        self.store = store
        self.shards = shards
        self._turns = itertools.count(random.randrange(shards))

    # --- creating -----------------------------------------------------------------------------

    def create_ops(self, asset_id: str, quantity: Decimal, scale: int) -> list[Op]:
        """A new asset's house: the header and its shards, the units split evenly."""
        header = {
            **keys.house_inventory_key(asset_id),
            "asset_id": asset_id,
            "initial_quantity": quantity,
            "shards": self.shards,
        }
        return [
            Put(keys.INVENTORY, header, NotExists()),
            *(
                Put(keys.INVENTORY, shard_item(asset_id, k, share), NotExists())
                for k, share in enumerate(split(quantity, self.shards, scale))
            ),
        ]

    # --- the house leg of a trade -------------------------------------------------------------

    def next_shard(self) -> int:
        """The shard a trade tries first: the next in turn, from a random start per process, so
        no two of this process's last `shards` trades share one (and processes start apart)."""
        return next(self._turns) % self.shards

    def trade_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op]:
        """The house's side of a trade on the next shard in turn, without a read: `quantity`
        units and `cash` to the house (negative: from it). The guard fails when that shard lacks
        the units (a buy) or does not exist; `cover_ops` then finds where they are."""
        return [self._move(keys.house_shard_key(asset_id, self.next_shard()), quantity, cash)]

    async def cover_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op] | None:
        """The house's side of a trade from what the house items hold now: one item that holds
        enough (looking from the next shard in turn), else several; None when the house as a
        whole lacks the units."""
        state = await self.read(asset_id)
        if not state.items:
            return None
        start, ring = self.next_shard(), max(self.shards, state.shards)
        ordered = sorted(state.items, key=lambda i: -1 if i.shard is None else (i.shard - start) % ring)
        if quantity >= 0:
            return [self._move(ordered[0].key, quantity, cash)]
        wanted = -quantity
        for item in ordered:
            if item.quantity >= wanted:
                return [self._move(item.key, quantity, cash)]
        if state.quantity < wanted:
            return None
        ops: list[Op] = []
        for item in sorted(ordered, key=lambda i: i.quantity, reverse=True):
            take = min(item.quantity, wanted)
            if take <= 0:
                break
            ops.append(self._move(item.key, -take, cash if not ops else NO_CASH))
            wanted -= take
        return ops

    @staticmethod
    def _move(key: Key, quantity: Decimal, cash: Decimal) -> Op:
        guard = Ge("quantity", -quantity) if quantity < 0 else Exists()
        return Update(keys.INVENTORY, key, add={"quantity": quantity, "cash": cash}, condition=guard)

    # --- reading ------------------------------------------------------------------------------

    async def read(self, asset_id: str) -> HouseState:
        """The header and every item holding the asset's house units (consistent reads)."""
        header_key = keys.house_inventory_key(asset_id)
        shard_keys = [keys.house_shard_key(asset_id, k) for k in range(self.shards)]
        found = await self.store.batch_get(keys.INVENTORY, [header_key, *shard_keys])
        header = next((item for item in found if item["pk"] == header_key["pk"]), None)
        stored = 0 if header is None else int(header.get("shards", 0))
        if stored > self.shards:
            more = [keys.house_shard_key(asset_id, k) for k in range(self.shards, stored)]
            shard_keys += more
            found += await self.store.batch_get(keys.INVENTORY, more)
        shard_of = {key["pk"]: k for k, key in enumerate(shard_keys)}
        items = [
            HouseItem(
                {"pk": item["pk"], "sk": item["sk"]},
                shard_of.get(item["pk"]),
                Decimal(item["quantity"]),
                Decimal(item.get("cash", NO_CASH)),
            )
            for item in found
            if "quantity" in item
        ]
        items.sort(key=lambda i: -1 if i.shard is None else i.shard)
        return HouseState(header, items)

    async def quantity(self, asset_id: str) -> Decimal:
        """The units of an asset the house holds now, over all its shards (0 when unknown)."""
        return (await self.read(asset_id)).quantity

    # --- rebalancing --------------------------------------------------------------------------

    async def rebalance(self, asset_id: str, scale: int) -> int:
        """Grow the asset to the configured shard count, then top up the shards that hold less
        than half an equal share from the richest; the number of transactions applied. Every
        move is one transaction guarded like a trade, so it can race trades safely."""
        state = await self.read(asset_id)
        if state.header is None or "shards" not in state.header:
            return 0  # not migrated yet (`cnop db migrate`)
        applied = 0
        if state.shards < self.shards:
            applied += await self._grow(asset_id, state.shards)
            state = await self.read(asset_id)
        shards = [item for item in state.items if item.shard is not None]
        if not shards:
            return applied
        quantum = Decimal(1).scaleb(-scale)
        share = (state.quantity / len(shards)).quantize(quantum, rounding=ROUND_DOWN)
        holding = {item.shard: item for item in shards}
        amounts = {item.shard: item.quantity for item in shards}
        for _ in range(len(shards)):
            poorest = min(amounts, key=lambda k: amounts[k])
            richest = max(amounts, key=lambda k: amounts[k])
            if amounts[poorest] >= share * LOW_SHARE or poorest == richest:
                break
            moved = min(share - amounts[poorest], amounts[richest] - share).quantize(quantum, rounding=ROUND_DOWN)
            if moved <= 0:
                break
            ops: list[Op] = [
                self._move(holding[richest].key, -moved, NO_CASH),
                self._move(holding[poorest].key, moved, NO_CASH),
            ]
            try:
                await self.store.transact(ops)
            except StoreError as exc:  # a trade got there first; the next round reads again
                log.debug("house rebalance of %s skipped: %s", asset_id, exc)
                break
            amounts[richest] -= moved
            amounts[poorest] += moved
            applied += 1
        return applied

    async def split_single_item(self, asset_id: str, scale: int) -> bool:
        """Migration 0002-house-shards for one asset: its single house item (units, cash and
        initial quantity) becomes the header and `shards` shards, the units split evenly at
        `scale` and the cash on shard 0, in one transaction guarded on the values read (a trade
        that lands meanwhile makes it read again). False when already split (or missing)."""
        for _ in range(SPLIT_ATTEMPTS):
            header = await self.store.get(keys.INVENTORY, keys.house_inventory_key(asset_id))
            if header is None or "quantity" not in header:
                return False
            quantity, cash = Decimal(header["quantity"]), Decimal(header.get("cash", NO_CASH))
            unchanged = And(Eq("quantity", quantity), Eq("cash", cash), AttrNotExists("shards"))
            ops: list[Op] = [
                Update(
                    keys.INVENTORY,
                    keys.house_inventory_key(asset_id),
                    set={"shards": self.shards},
                    remove=("quantity", "cash"),
                    condition=unchanged,
                ),
                *(
                    Put(keys.INVENTORY, shard_item(asset_id, k, share, cash if k == 0 else NO_CASH), NotExists())
                    for k, share in enumerate(split(quantity, self.shards, scale))
                ),
            ]
            try:
                await self.store.transact(ops)
            except ConditionFailed:
                continue
            return True
        raise StoreError(f"{asset_id}: the house item kept changing; run the migration again")

    async def _grow(self, asset_id: str, stored: int) -> int:
        ops: list[Op] = [
            Update(
                keys.INVENTORY,
                keys.house_inventory_key(asset_id),
                set={"shards": self.shards},
                condition=Eq("shards", stored),
            ),
            *(Put(keys.INVENTORY, shard_item(asset_id, k, ZERO), NotExists()) for k in range(stored, self.shards)),
        ]
        try:
            await self.store.transact(ops)
        except StoreError as exc:
            log.debug("house shards of %s not grown: %s", asset_id, exc)
            return 0
        return 1


class HouseRebalancer:
    """Runs `HouseInventory.rebalance` over every asset every `interval` seconds. With a lease
    (the cloud shape) only the process holding it does, so the fleet rebalances once."""

    def __init__(
        self,
        house: HouseInventory,
        assets: Callable[[], Awaitable[Sequence[Asset]]],
        interval: float,
        lease: FencedLease | None = None,
    ) -> None:
        self.house = house
        self.assets = assets
        self.interval = interval
        self.lease = lease

    async def round(self) -> int:
        if self.lease is not None and await self.lease.acquire() is None:
            return 0
        applied = 0
        for asset in await self.assets():
            applied += await self.house.rebalance(asset.asset_id, asset.scale)
        return applied

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except Exception as exc:  # a store or Redis outage: try again next round
                log.warning("house rebalance round failed: %s", exc)
