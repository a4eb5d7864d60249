"""Two OS processes writing one SQLite file lose no update."""

from __future__ import annotations

import asyncio
import multiprocessing
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, Put, SortKey, Update

pytestmark = pytest.mark.system


def _worker(path: str, name: str, count: int) -> None:
    async def run() -> None:
        store = SQLiteStore(path)
        for i in range(count):
            await store.transact(
                [
                    Update(keys.USERS, {"pk": "C", "sk": "COUNTER"}, add={"n": 1, "total": Decimal("0.01")}),
                    Put(keys.USERS, {"pk": "C", "sk": f"TXN#{name}#{i:04d}", "amount": Decimal("0.01")}),
                ]
            )
        await store.close()

    asyncio.run(run())


def test_two_processes_on_one_file_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    asyncio.run(SQLiteStore(path).create_tables())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(path, name, 300)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0

    async def check() -> None:
        store = SQLiteStore(path)
        counter = await store.get(keys.USERS, {"pk": "C", "sk": "COUNTER"})
        assert counter is not None
        assert counter["n"] == 600 and counter["total"] == Decimal("6.00")
        seen = 0
        cursor = None
        while True:
            page = await store.query(keys.USERS, "C", sk=SortKey.prefix("TXN#"), limit=250, cursor=cursor)
            seen += len(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == 600
        await store.close()

    asyncio.run(check())


def test_two_processes_racing_for_the_same_funds_never_overspend(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")

    async def setup() -> None:
        store = SQLiteStore(path)
        await store.transact([Put(keys.USERS, {"pk": "R", "sk": "BAL", "available": Decimal("50")})])
        await store.close()

    asyncio.run(setup())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spender, args=(path, name)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0

    async def check() -> None:
        store = SQLiteStore(path)
        bal = await store.get(keys.USERS, {"pk": "R", "sk": "BAL"})
        spent = await store.query(keys.USERS, "R", sk=SortKey.prefix("TXN#"), limit=100)
        assert bal is not None and bal["available"] == 0
        assert len(spent.items) == 50
        await store.close()

    asyncio.run(check())


def _spender(path: str, name: str) -> None:
    from cnop.common.exceptions import ConditionFailed

    async def run() -> None:
        store = SQLiteStore(path)
        for i in range(40):
            try:
                await store.transact(
                    [
                        Update(
                            keys.USERS, {"pk": "R", "sk": "BAL"}, add={"available": -1}, condition=Ge("available", 1)
                        ),
                        Put(keys.USERS, {"pk": "R", "sk": f"TXN#{name}#{i:03d}"}),
                    ]
                )
            except ConditionFailed:
                pass
        await store.close()

    asyncio.run(run())
