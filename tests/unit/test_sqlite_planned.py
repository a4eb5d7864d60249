"""The SQLite engine's planned transactions (`PlannedTransactions`): the plan reads its item
inside the transaction that applies what it builds, in a group commit inside its own savepoint.

And what both engines tell about a failed condition: the item as the engine found it
(`ConditionFailed.item`), which lets a caller retry without reading again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Eq, Ge, Item, ItemStore, NotExists, Op, PlannedTransactions, Put, Update
from cnop.common.exceptions import ConditionFailed
from tests.unit.test_sqlite_group_commit import CountingConnection, balance_and_ledger, pause, withdrawal

T = keys.USERS
BAL = {"pk": "U", "sk": "BAL"}


@pytest.fixture(params=[True, False], ids=["group-commit", "one-by-one"])
async def sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "p.db"), group_commit=request.param)
    await s.create_tables()
    await s.transact([Put(T, {**BAL, "available": Decimal("100.00")})])
    yield s
    await s.close()


def halve(seen: list[Item | None], n: int) -> Any:
    """A plan that withdraws half of what the balance holds, as it finds it."""

    def plan(item: Item | None) -> list[Op]:
        seen.append(item)
        assert item is not None
        half = (item["available"] / 2).quantize(Decimal("0.01"))
        return [
            Update(T, BAL, add={"available": -half}, condition=Ge("available", half)),
            Put(T, {"pk": "U", "sk": f"TXN#{n:04d}", "amount": -half}, NotExists()),
        ]

    return plan


def test_the_sqlite_store_plans_and_dynamodb_does_not() -> None:
    from cnop.common.database.dynamodb import DynamoDBStore

    assert isinstance(SQLiteStore(":memory:"), PlannedTransactions)
    assert not isinstance(DynamoDBStore.for_local("http://127.0.0.1:1"), PlannedTransactions)


async def test_each_plan_sees_what_the_transactions_before_it_wrote(sqlite: SQLiteStore) -> None:
    seen: list[Item | None] = []
    await asyncio.gather(*(sqlite.transact_planned(T, BAL, halve(seen, n)) for n in range(4)))
    assert [item["available"] for item in seen if item is not None] == [
        Decimal("100.00"),
        Decimal("50.00"),
        Decimal("25.00"),
        Decimal("12.50"),
    ]
    assert await balance_and_ledger(sqlite) == (Decimal("6.25"), [f"TXN#{n:04d}" for n in range(4)])


async def test_queued_plans_commit_together_with_plain_transactions(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "b.db"))
    await store.create_tables()
    await store.transact([Put(T, {**BAL, "available": Decimal("100.00")})])
    counting = CountingConnection(store._connection())
    store._connection = lambda: counting  # type: ignore[assignment,return-value,method-assign]
    release: threading.Event = pause(store)
    seen: list[Item | None] = []
    tasks = [
        asyncio.ensure_future(store.transact(withdrawal(0, "10.00"))),
        asyncio.ensure_future(store.transact_planned(T, BAL, halve(seen, 1))),
        asyncio.ensure_future(store.transact(withdrawal(2, "5.00"))),
        asyncio.ensure_future(store.transact_planned(T, BAL, halve(seen, 3))),
    ]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert counting.commits() == 1
    assert [item["available"] for item in seen if item is not None] == [Decimal("90.00"), Decimal("40.00")]
    assert await balance_and_ledger(store) == (Decimal("20.00"), [f"TXN#{n:04d}" for n in range(4)])
    await store.close()


async def test_a_plan_that_raises_writes_nothing_and_its_error_reaches_the_caller(sqlite: SQLiteStore) -> None:
    class Refused(Exception):
        pass

    def refuse(item: Item | None) -> list[Op]:
        raise Refused()

    seen: list[Item | None] = []
    results = await asyncio.gather(
        sqlite.transact_planned(T, BAL, halve(seen, 0)),
        sqlite.transact_planned(T, BAL, refuse),
        sqlite.transact_planned(T, BAL, halve(seen, 2)),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], Refused) and results[2] is None
    assert await balance_and_ledger(sqlite) == (Decimal("25.00"), ["TXN#0000", "TXN#0002"])


async def test_a_built_op_whose_condition_fails_is_named_among_the_built_ops(sqlite: SQLiteStore) -> None:
    def overdraw(item: Item | None) -> list[Op]:
        return [
            Put(T, {"pk": "U", "sk": "TXN#0009", "amount": Decimal("-1000")}, NotExists()),
            Update(T, BAL, add={"available": Decimal("-1000")}, condition=Ge("available", Decimal("1000"))),
        ]

    with pytest.raises(ConditionFailed) as failed:
        await sqlite.transact_planned(T, BAL, overdraw)
    assert failed.value.index == 1
    assert failed.value.item is not None and failed.value.item["available"] == Decimal("100.00")
    assert await balance_and_ledger(sqlite) == (Decimal("100.00"), [])


async def test_a_plan_reads_a_missing_or_expired_item_as_none(sqlite: SQLiteStore) -> None:
    seen: list[Item | None] = []

    def record(item: Item | None) -> list[Op]:
        seen.append(item)
        return [Put(T, {"pk": "U", "sk": f"TXN#{len(seen):04d}"}, NotExists())]

    await sqlite.transact_planned(T, {"pk": "U", "sk": "NONE"}, record)
    await sqlite.transact([Put(T, {"pk": "U", "sk": "OLD", "expires_at": Decimal(1)})])
    await sqlite.transact_planned(T, {"pk": "U", "sk": "OLD"}, record)
    assert seen == [None, None]


async def test_a_plan_building_an_invalid_transaction_is_refused(sqlite: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="at least one op"):
        await sqlite.transact_planned(T, BAL, lambda item: [])
    with pytest.raises(ValueError, match="unknown table"):
        await sqlite.transact_planned("nope", BAL, lambda item: [])


async def test_a_failed_update_condition_tells_the_item_as_found(store: ItemStore) -> None:
    """Both engines: the failing update's item comes back with `ConditionFailed`."""
    await store.transact([Put(T, {**BAL, "available": Decimal("7.00"), "version": Decimal(3)})])
    with pytest.raises(ConditionFailed) as failed:
        await store.transact(
            [
                Put(T, {"pk": "U", "sk": "TXN#0001"}, NotExists()),
                Update(T, BAL, add={"available": Decimal(-1), "version": Decimal(1)}, condition=Eq("version", 2)),
            ]
        )
    assert failed.value.index == 1
    assert failed.value.item is not None
    assert (failed.value.item["available"], failed.value.item["version"]) == (Decimal("7.00"), Decimal(3))
