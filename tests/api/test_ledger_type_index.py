"""The ledger index by type (decision 0026): filtered listings read a key range, and a store
written before the index is brought to it by `cnop db migrate` (migration 0001)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cnop.audit import run_audit
from cnop.common.database import keys
from cnop.common.database.store import Item, Put, SortKey, query_all
from cnop.common.entities.balance import TransactionType
from cnop.common.migrations import MIGRATIONS, migrate, pending
from tests.support.api import Api, assert_problem
from tests.support.wire import read

# What a ledger entry held before the index (the format this migration starts from).
OLD_LEDGER_FIELDS = {
    "pk", "sk", "transaction_id", "username", "transaction_type", "amount", "available_change",
    "held_change", "status", "description", "order_id", "created_at",
}  # fmt: skip


async def listing(api: Api, headers: dict[str, str], **params: Any) -> Any:
    r = await api.client.get("/api/v1/balance/transactions", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return read(r)


async def every_page(api: Api, headers: dict[str, str], **params: Any) -> list[Any]:
    seen: list[Any] = []
    cursor = None
    while True:
        page = await listing(api, headers, **params, **({"cursor": cursor} if cursor else {}))
        seen += page["transactions"]
        if not page["has_more"]:
            return seen
        cursor = page["next_cursor"]


async def ledger_items(api: Api, username: str) -> list[Item]:
    store = api.container.store
    return [
        item async for item in query_all(store, keys.USERS, keys.user_pk(username), sk=SortKey.prefix(keys.TXN_PREFIX))
    ]


async def mixed_ledger(api: Api) -> tuple[str, dict[str, str]]:
    """A user with deposits, withdrawals, a buy and a sell: five entry types."""
    username, headers = await api.register()
    for amount in ("100", "7", "300"):
        await api.deposit(headers, amount)
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "5"}, headers=headers)
    assert r.status_code == 201, r.text
    api.set_price("BTC", "50000")
    for side in ("market_buy", "market_buy", "market_sell"):
        r = await api.order(headers, asset_id="BTC", quantity="0.001", order_type=side)
        assert r.status_code == 201, r.text
    return username, headers


async def test_a_filtered_listing_is_every_entry_of_that_type_newest_first(api: Api) -> None:
    username, headers = await mixed_ledger(api)
    everything = await every_page(api, headers, limit=100)
    assert len(everything) == 7
    for kind in TransactionType:
        expected = [e for e in everything if e["transaction_type"] == kind.value]
        assert await every_page(api, headers, transaction_type=kind.value, limit=1) == expected
        assert (await listing(api, headers, transaction_type=kind.value, limit=100))["transactions"] == expected
    deposits = await every_page(api, headers, transaction_type="deposit", limit=2)
    assert [e["amount"] for e in deposits] == ["300.00", "7.00", "100.00"]
    for item in await ledger_items(api, username):  # each entry is filed under its own type
        assert {k: item[k] for k in ("gsi1pk", "gsi1sk")} == keys.ledger_type_index(
            username, item["transaction_type"], item["sk"]
        )


async def test_a_cursor_is_a_position_in_the_ledger_whichever_listing_made_it(api: Api) -> None:
    _, headers = await mixed_ledger(api)
    everything = await every_page(api, headers, limit=100)
    first = await listing(api, headers, limit=2)
    after = everything[2:]
    filtered = await listing(api, headers, transaction_type="deposit", cursor=first["next_cursor"], limit=100)
    assert filtered["transactions"] == [e for e in after if e["transaction_type"] == "deposit"]
    one_deposit = await listing(api, headers, transaction_type="deposit", limit=1)
    rest = await listing(api, headers, cursor=one_deposit["next_cursor"], limit=100)
    newest_deposit = everything.index(one_deposit["transactions"][0])
    assert rest["transactions"] == everything[newest_deposit + 1 :]
    _, other = await api.register()
    r = await api.client.get(
        "/api/v1/balance/transactions",
        headers=other,
        params={"transaction_type": "deposit", "cursor": first["next_cursor"]},
    )
    assert_problem(r, 422, "validation_error")


async def test_migrate_files_a_store_written_before_the_index(api: Api) -> None:
    store = api.container.store
    alice, alice_headers = await mixed_ledger(api)
    bob, bob_headers = await api.register()
    await api.deposit(bob_headers, "12.50")
    # The store as it was before the index: every ledger entry in the old format.
    written: dict[str, Item] = {}
    for username in (alice, bob):
        for item in await ledger_items(api, username):
            old = {name: value for name, value in item.items() if name in OLD_LEDGER_FIELDS}
            assert set(old) == OLD_LEDGER_FIELDS
            await store.transact([Put(keys.USERS, old)])
            written[old["sk"]] = old
    old_entries = len(written)
    assert old_entries == 8
    everything = await every_page(api, alice_headers, limit=100)
    assert (await listing(api, alice_headers, transaction_type="deposit"))["transactions"] == []
    report = await run_audit(store)
    assert not report.ok and any("not filed under their type" in v for v in report.violations)

    settings, clock = api.container.settings, api.container.clock
    assert [m.name for m in await pending(store)] == [m.name for m in MIGRATIONS]
    applied = await migrate(store, settings, clock)
    assert [(a.name, a.changed) for a in applied if a.name == "0001-ledger-type-index"] == [
        ("0001-ledger-type-index", old_entries)
    ]
    assert await pending(store) == []
    assert await migrate(store, settings, clock) == []  # recorded: nothing pending
    again = await migrate(store, settings, clock, rerun=True)  # idempotent: nothing left to change
    assert all(a.changed == 0 for a in again) and len(again) == len(MIGRATIONS)

    assert await every_page(api, alice_headers, limit=100) == everything
    for kind in TransactionType:
        expected = [e for e in everything if e["transaction_type"] == kind.value]
        assert await every_page(api, alice_headers, transaction_type=kind.value, limit=2) == expected
    bob_deposits = (await listing(api, bob_headers, transaction_type="deposit"))["transactions"]
    assert [e["amount"] for e in bob_deposits] == ["12.50"]
    report = await run_audit(store)
    assert report.ok, report.violations
    balance = await store.get(keys.USERS, keys.balance_key(bob))
    assert balance is not None and balance["available"] == Decimal("12.50")
    for username in (alice, bob):  # the index attributes were added, nothing else changed
        for item in await ledger_items(api, username):
            index = keys.ledger_type_index(username, item["transaction_type"], item["sk"])
            assert item == {**written[item["sk"]], **index}
