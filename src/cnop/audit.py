"""`cnop audit`: check the ledger invariants of design §5 over the whole store.

1. per user, ledger entries sum to the cash balance (available and held separately);
   per user and asset, asset transactions sum to the holding;
2. nothing available or held is negative;
3. held cash and units equal the reservations of the user's resting orders;
4. per asset, house inventory + all holdings is constant;
5. cash paid by buyers equals cash received by the house, and the reverse for sells.

Checks register themselves in `CHECKS`; services add theirs as they gain the entities.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from cnop.common.database import keys
from cnop.common.database.store import Item, ItemStore, SortKey


@dataclass
class AuditReport:
    checked_users: int = 0
    violations: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


async def query_all(
    store: ItemStore, table: str, pk: str, *, sk: SortKey | None = None, index: str | None = None
) -> AsyncIterator[Item]:
    cursor = None
    while True:
        page = await store.query(table, pk, sk=sk, index=index, limit=500, cursor=cursor)
        for item in page.items:
            yield item
        cursor = page.next_cursor
        if cursor is None:
            return


async def all_usernames(store: ItemStore) -> list[str]:
    return [item["username"] async for item in query_all(store, keys.USERS, keys.USERS_INDEX_PK, index="gsi1")]


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
    async for entry in query_all(store, keys.USERS, pk, sk=SortKey.prefix(keys.TXN_PREFIX)):
        available += entry["available_change"]
        held += entry["held_change"]
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
