"""`cnop audit`: check the ledger invariants (docs/storage.md §2) over the whole store.

1. per user, ledger entries sum to the cash balance (available and held separately), and each
   is filed under its type in the ledger index (`keys.ledger_type_index`);
   per user and asset, asset transactions sum to the holding;
2. nothing available or held is negative;
3. held cash and units equal the reservations of the user's resting orders;
4. per asset, house inventory (the sum of its shards) + all holdings is constant;
5. cash paid by buyers equals cash received by the house, and the reverse for sells.

Checks register themselves in `CHECKS`; services add theirs as they gain the entities.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from cnop.common.dao.house_dao import MAX_SHARDS, HouseInventory
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, SortKey, query_all


@dataclass
class AuditReport:
    checked_users: int = 0
    violations: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


async def all_usernames(store: ItemStore) -> list[str]:
    return [
        item["username"] async for item in query_all(store, keys.USERS, keys.USERS_INDEX_PK, index=keys.USERS_INDEX)
    ]


UserCheck = Callable[[ItemStore, str, AuditReport], Awaitable[None]]
GlobalCheck = Callable[[ItemStore, list[str], AuditReport], Awaitable[None]]
USER_CHECKS: list[UserCheck] = []
GLOBAL_CHECKS: list[GlobalCheck] = []


async def check_cash(store: ItemStore, username: str, report: AuditReport) -> None:
    """Invariants 1 and 2 for cash."""
    pk = keys.user_pk(username)
    balance = await store.get(keys.USERS, keys.balance_key(username))
    if balance is None:
        report.violations.append(f"{username}: no balance record")
        return
    available = held = Decimal(0)
    unfiled = 0
    async for entry in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.TXN_PREFIX)):
        available += entry["available_change"]
        held += entry["held_change"]
        index = keys.ledger_type_index(username, entry["transaction_type"], entry["sk"])
        unfiled += any(entry.get(name) != value for name, value in index.items())
    if unfiled:
        report.violations.append(
            f"{username}: {unfiled} ledger entries not filed under their type (run `cnop db migrate`)"
        )
    if available != balance["available"]:
        report.violations.append(
            f"{username}: ledger sums to available {available}, balance says {balance['available']}"
        )
    if held != balance["held"]:
        report.violations.append(f"{username}: ledger sums to held {held}, balance says {balance['held']}")
    for name in ("available", "held"):
        if balance[name] < 0:
            report.violations.append(f"{username}: negative {name} cash {balance[name]}")


USER_CHECKS.append(check_cash)


async def run_audit(store: ItemStore) -> AuditReport:
    report = AuditReport()
    usernames = await all_usernames(store)
    for username in usernames:
        for check in USER_CHECKS:
            await check(store, username, report)
        report.checked_users += 1
    for global_check in GLOBAL_CHECKS:
        await global_check(store, usernames, report)
    return report


TRADE_CASH_TYPES = ("order_payment", "order_proceeds", "order_refund")


async def check_holdings(store: ItemStore, username: str, report: AuditReport) -> None:
    """Invariants 1 and 2 for assets: asset transactions explain every holding, none negative."""
    pk = keys.user_pk(username)
    moved: dict[str, list[Decimal]] = {}
    async for txn in query_all(store, keys.ORDERS, pk, sk=SortKey.prefix(keys.ASSET_TXN_PREFIX)):
        sums = moved.setdefault(txn["asset_id"], [Decimal(0), Decimal(0)])
        sums[0] += txn["available_change"]
        sums[1] += txn["held_change"]
    holdings = {
        h["asset_id"]: h async for h in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.HOLDING_PREFIX))
    }
    for asset_id in sorted(set(moved) | set(holdings)):
        available, held = moved.get(asset_id, [Decimal(0), Decimal(0)])
        holding = holdings.get(asset_id, {"available": Decimal(0), "held": Decimal(0)})
        if available != holding["available"] or held != holding["held"]:
            report.violations.append(
                f"{username} {asset_id}: asset transactions sum to available {available} / held {held}, "
                f"holding says {holding['available']} / {holding['held']}"
            )
        for name in ("available", "held"):
            if holding[name] < 0:
                report.violations.append(f"{username} {asset_id}: negative {name} quantity {holding[name]}")


USER_CHECKS.append(check_holdings)


async def check_conservation(store: ItemStore, usernames: list[str], report: AuditReport) -> None:
    """Invariants 4 and 5: trades move units and cash between users and the house, never make them."""
    held_by_users: dict[str, Decimal] = {}
    user_trade_cash = Decimal(0)
    for username in usernames:
        pk = keys.user_pk(username)
        async for holding in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.HOLDING_PREFIX)):
            quantity = holding["available"] + holding["held"]
            held_by_users[holding["asset_id"]] = held_by_users.get(holding["asset_id"], Decimal(0)) + quantity
        async for entry in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.TXN_PREFIX)):
            if entry["transaction_type"] in TRADE_CASH_TYPES:
                user_trade_cash += entry["available_change"] + entry["held_change"]
    house_cash = Decimal(0)
    assets = 0
    # Every shard a store may hold, not only the configured count: a stray one is a violation.
    houses = HouseInventory(store, MAX_SHARDS)
    shards = 0
    async for asset in query_all(store, keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX):
        asset_id = asset["asset_id"]
        house = await houses.read(asset_id)
        if house.header is None or not house.items:
            report.violations.append(f"{asset_id}: no house inventory")
            continue
        assets += 1
        shards += len(house.items)
        house_cash += house.cash
        total = house.quantity + held_by_users.get(asset_id, Decimal(0))
        initial = house.header["initial_quantity"]
        if total != initial:
            report.violations.append(
                f"{asset_id}: house {house.quantity} (over {len(house.items)} items) + users "
                f"{held_by_users.get(asset_id, 0)} = {total}, not the {initial} that exist"
            )
        for item in house.items:
            where = "house inventory" if item.shard is None else f"house shard {item.shard}"
            if item.quantity < 0:
                report.violations.append(f"{asset_id}: negative {where} {item.quantity}")
            if item.shard is not None and item.shard >= house.shards:
                report.violations.append(f"{asset_id}: {where} beyond the {house.shards} the header counts")
    if house_cash + user_trade_cash != 0:
        report.violations.append(
            f"cash: the house received {house_cash} USD but users' trades moved {user_trade_cash} USD"
        )
    report.facts["assets checked"] = str(assets)
    report.facts["house items (shards)"] = str(shards)
    report.facts["house trade cash (USD)"] = str(house_cash)


GLOBAL_CHECKS.append(check_conservation)


async def check_reservations(store: ItemStore, username: str, report: AuditReport) -> None:
    """Invariant 3: held cash and units equal what the user's queued orders reserve."""
    pk = keys.user_pk(username)
    cash = Decimal(0)
    units: dict[str, Decimal] = {}
    async for order in query_all(store, keys.ORDERS, pk, sk=SortKey.prefix(keys.ORDER_PREFIX)):
        if order["status"] != "queued":
            continue
        if order["order_type"].endswith("_buy"):
            cash += order["held_amount"]
        else:
            units[order["asset_id"]] = units.get(order["asset_id"], Decimal(0)) + order["held_amount"]
    balance = await store.get(keys.USERS, keys.balance_key(username))
    if balance is not None and balance["held"] != cash:
        report.violations.append(f"{username}: held cash {balance['held']} but queued buys reserve {cash}")
    async for holding in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.HOLDING_PREFIX)):
        reserved = units.pop(holding["asset_id"], Decimal(0))
        if holding["held"] != reserved:
            report.violations.append(
                f"{username} {holding['asset_id']}: held {holding['held']} but queued sells reserve {reserved}"
            )
    for asset_id, reserved in units.items():
        report.violations.append(f"{username} {asset_id}: queued sells reserve {reserved} of a holding that is missing")


USER_CHECKS.append(check_reservations)
