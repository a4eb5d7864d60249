"""The SQLite engine's group commit: queued transactions share one commit, a savepoint each.

The conformance suite checks the outcomes every engine must give under concurrency; these tests
pin what only this engine does: that queued transactions really commit together, that a batch
failing as a whole reruns its transactions alone, and that no caller hears of its transaction
before the commit that holds it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, NotExists, Op, Put, SortKey, Update
from cnop.common.exceptions import ConditionFailed, StoreError

T = keys.USERS


def k(pk: str, sk: str) -> dict[str, str]:
    return {"pk": pk, "sk": sk}


def withdrawal(n: int, amount: str) -> list[Op]:
    return [
        Update(T, k("U", "BAL"), add={"available": -Decimal(amount)}, condition=Ge("available", Decimal(amount))),
        Put(T, {"pk": "U", "sk": f"TXN#{n:04d}", "amount": -Decimal(amount)}, NotExists()),
    ]


class CountingConnection:
    """The store's connection, counting the statements that begin and end transactions, and
    failing `COMMIT` (or a statement naming `fail_on`) with an SQLite error when told to."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []
        self.fail_commits = 0
        self.fail_on: str | None = None

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK") or sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            self.statements.append(sql)
        if sql == "COMMIT" and self.fail_commits:
            self.fail_commits -= 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        if self.fail_on is not None and any(self.fail_on == p for p in params):
            raise sqlite3.OperationalError("database disk image is malformed (injected)")
        return self.conn.execute(sql, params)

    def commits(self) -> int:
        return self.statements.count("COMMIT")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "g.db"))
    await s.create_tables()
    await s.transact([Put(T, {"pk": "U", "sk": "BAL", "available": Decimal("100.00")})])
    yield s
    await s.close()


@pytest.fixture
def counting(store: SQLiteStore) -> CountingConnection:
    counting = CountingConnection(store._connection())
    store._connection = lambda: counting  # type: ignore[assignment,return-value,method-assign]
    return counting


def pause(store: SQLiteStore) -> threading.Event:
    """Holds the store thread until set (30 s at most), so that transactions started meanwhile queue up."""
    release = threading.Event()
    store._executor.submit(release.wait, 30)
    return release


@pytest.fixture
def paused(store: SQLiteStore) -> Iterator[threading.Event]:
    release = pause(store)
    yield release
    release.set()


async def outcomes(store: SQLiteStore, transactions: list[list[Op]], release: threading.Event) -> list[Any]:
    tasks = [asyncio.ensure_future(store.transact(ops)) for ops in transactions]
    await asyncio.sleep(0)  # every task queues its transaction
    assert len(store._queue) == len(transactions)
    release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def balance_and_ledger(store: SQLiteStore) -> tuple[Decimal, list[str]]:
    balance = await store.get(T, k("U", "BAL"))
    assert balance is not None
    ledger = await store.query(T, "U", sk=SortKey.prefix("TXN#"), limit=1000)
    return balance["available"], [item["sk"] for item in ledger.items]


async def test_queued_transactions_commit_together_and_a_refused_one_rolls_back_alone(
    store: SQLiteStore, counting: CountingConnection, paused: threading.Event
) -> None:
    # 12 withdrawals of 10.00 from 100.00 in one batch, in queue order: the first ten see enough
    # funds (each sees the ones before it), the last two are refused by the guard.
    results = await outcomes(store, [withdrawal(n, "10.00") for n in range(12)], paused)
    assert results[:10] == [None] * 10
    assert [type(r) for r in results[10:]] == [ConditionFailed, ConditionFailed]
    assert [r.index for r in results[10:]] == [0, 0]  # type: ignore[union-attr]
    assert counting.statements.count("BEGIN IMMEDIATE") == 1 and counting.commits() == 1
    assert counting.statements.count("SAVEPOINT tx") == 12
    assert counting.statements.count("ROLLBACK TO tx") == 2
    assert await balance_and_ledger(store) == (Decimal("0.00"), [f"TXN#{n:04d}" for n in range(10)])


async def test_a_refusal_after_a_write_undoes_that_write_only(store: SQLiteStore, counting: CountingConnection) -> None:
    # The second transaction writes the balance, then finds its ledger key taken: its savepoint
    # undoes the balance write, and the transactions around it commit.
    await store.transact([Put(T, {"pk": "U", "sk": "TXN#0001", "amount": Decimal("0")})])
    results = await outcomes(store, [withdrawal(n, "1.00") for n in range(3)], pause(store))
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ConditionFailed) and results[1].index == 1
    assert await balance_and_ledger(store) == (Decimal("98.00"), ["TXN#0000", "TXN#0001", "TXN#0002"])
    assert (await store.get(T, k("U", "TXN#0001"))) == {"pk": "U", "sk": "TXN#0001", "amount": Decimal("0")}


async def test_a_batch_whose_commit_fails_reruns_each_transaction_alone_once(
    store: SQLiteStore, counting: CountingConnection, paused: threading.Event
) -> None:
    counting.fail_commits = 1
    results = await outcomes(store, [withdrawal(n, "30.00") for n in range(4)], paused)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ConditionFailed)
    # One batch (rolled back at COMMIT), then four transactions alone: each applied once, the last refused.
    assert counting.statements.count("BEGIN IMMEDIATE") == 5 and counting.commits() == 1 + 3
    assert "ROLLBACK" in counting.statements
    assert await balance_and_ledger(store) == (Decimal("10.00"), ["TXN#0000", "TXN#0001", "TXN#0002"])


async def test_an_sqlite_error_of_one_transaction_fails_it_alone(
    store: SQLiteStore, counting: CountingConnection, paused: threading.Event
) -> None:
    counting.fail_on = "TXN#0001"
    results = await outcomes(store, [withdrawal(n, "5.00") for n in range(3)], paused)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "malformed" in str(results[1])
    assert await balance_and_ledger(store) == (Decimal("90.00"), ["TXN#0000", "TXN#0002"])


async def test_no_caller_hears_of_its_transaction_before_it_is_committed(store: SQLiteStore, tmp_path: Path) -> None:
    # The moment each caller's transaction returns, another connection to the file must see it.
    other = sqlite3.connect(str(tmp_path / "g.db"))
    seen: list[bool] = []

    async def withdraw_and_look(n: int) -> None:
        try:
            await store.transact(withdrawal(n, "1.00"))
        except ConditionFailed:
            return
        row = other.execute("SELECT 1 FROM users WHERE pk='U' AND sk=?", (f"TXN#{n:04d}",)).fetchone()
        seen.append(row is not None)

    try:
        await asyncio.gather(*(withdraw_and_look(n) for n in range(150)))
    finally:
        other.close()
    assert seen == [True] * 100


async def test_a_caller_that_stops_waiting_before_its_batch_starts_is_not_applied(
    store: SQLiteStore, paused: threading.Event
) -> None:
    kept = asyncio.ensure_future(store.transact(withdrawal(0, "1.00")))
    dropped = asyncio.ensure_future(store.transact(withdrawal(1, "1.00")))
    await asyncio.sleep(0)
    dropped.cancel()
    paused.set()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert await balance_and_ledger(store) == (Decimal("99.00"), ["TXN#0000"])


async def test_batches_are_bounded_and_reads_run_between_them(tmp_path: Path) -> None:
    # Reads on the store thread (as they run off the event loop's thread, or when SQLite is busy).
    store = SQLiteStore(str(tmp_path / "b.db"), max_batch=4, inline_reads=False)
    await store.create_tables()
    await store.transact([Put(T, {"pk": "U", "sk": "BAL", "available": Decimal("100.00")})])
    counting = CountingConnection(store._connection())
    store._connection = lambda: counting  # type: ignore[assignment,return-value,method-assign]
    release = pause(store)
    try:
        writes = [asyncio.ensure_future(store.transact(withdrawal(n, "1.00"))) for n in range(10)]
        await asyncio.sleep(0)
        read = asyncio.ensure_future(store.get(T, k("U", "BAL")))
        # Let the read hand its job to the store thread before the thread is released: started
        # later, it could queue behind the second batch (a loaded machine delays this loop).
        for _ in range(3):
            await asyncio.sleep(0)
        release.set()
        balance = await read
        await asyncio.gather(*writes)
        # The read was queued behind the first batch only: it sees 4 withdrawals, not 10.
        assert balance is not None and balance["available"] == Decimal("96.00")
        assert counting.commits() == 3  # 4 + 4 + 2
        assert await balance_and_ledger(store) == (Decimal("90.00"), [f"TXN#{n:04d}" for n in range(10)])
    finally:
        release.set()
        await store.close()


async def test_inline_reads_answer_at_once_with_what_is_committed(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "i.db"))
    await store.create_tables()
    await store.transact([Put(T, {"pk": "U", "sk": "BAL", "available": Decimal("100.00")})])
    release = pause(store)
    try:
        writes = [asyncio.ensure_future(store.transact(withdrawal(n, "1.00"))) for n in range(3)]
        await asyncio.sleep(0)
        # The store thread is held: a read does not wait for it, and sees the last commit.
        read = store.get(T, k("U", "BAL"))
        assert isinstance(read, asyncio.Future) and read.done()
        assert (await read or {}).get("available") == Decimal("100.00")
        page = store.query(T, "U", sk=SortKey.prefix("TXN#"))
        assert isinstance(page, asyncio.Future) and (await page).items == []
        release.set()
        await asyncio.gather(*writes)
        # A caller reads what it wrote once its transaction returned.
        assert await balance_and_ledger(store) == (Decimal("97.00"), [f"TXN#{n:04d}" for n in range(3)])
        found = await store.batch_get(T, [k("U", "BAL"), k("U", "TXN#0001"), k("U", "none")])
        assert sorted(item["sk"] for item in found) == ["BAL", "TXN#0001"]
        # Another thread's loop reads through the store thread (the read connection is this thread's).
        other = await asyncio.to_thread(asyncio.run, _read_balance(store))
        assert other == Decimal("97.00")
    finally:
        release.set()
        await store.close()
    with pytest.raises(RuntimeError):
        await store.get(T, k("U", "BAL"))


async def _read_balance(store: SQLiteStore) -> Decimal:
    read = store.get(T, k("U", "BAL"))
    assert not isinstance(read, asyncio.Future)  # a coroutine: the hop to the store thread
    item = await read
    assert item is not None
    return Decimal(item["available"])


async def test_a_busy_inline_read_goes_to_the_store_thread(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "busy.db"))
    await store.create_tables()
    await store.transact([Put(T, {"pk": "U", "sk": "BAL", "available": Decimal("5.00")})])
    await store.get(T, k("U", "BAL"))  # opens the read connection

    class Busy:
        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("database is locked")

    real, store._reader = store._reader, Busy()  # type: ignore[assignment]
    try:
        read = store.get(T, k("U", "BAL"))
        assert not isinstance(read, asyncio.Future)
        assert (await read or {}).get("available") == Decimal("5.00")
    finally:
        store._reader = real
        await store.close()


async def test_a_closed_store_refuses_transactions(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.create_tables()
    await store.close()
    with pytest.raises(StoreError):
        await store.transact([Put(T, {"pk": "U", "sk": "X"})])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=40),
    start=st.integers(min_value=0, max_value=20000),
    max_batch=st.integers(min_value=1, max_value=8),
)
def test_concurrent_withdrawals_in_any_batching_keep_money_exact(
    tmp_path_factory: pytest.TempPathFactory, amounts: list[int], start: int, max_batch: int
) -> None:
    # Whatever batches form, the balance is the start minus exactly the withdrawals that
    # succeeded, never negative, with one ledger entry per success, and a withdrawal is refused
    # only when the balance it saw (in commit order) was short.
    async def scenario() -> None:
        store = SQLiteStore(str(tmp_path_factory.mktemp("h") / "h.db"), max_batch=max_batch)
        try:
            await store.create_tables()
            opening = Decimal(start).scaleb(-2)
            await store.transact([Put(T, {"pk": "U", "sk": "BAL", "available": opening})])
            cents = [Decimal(a).scaleb(-2) for a in amounts]
            results = await asyncio.gather(
                *(store.transact(withdrawal(n, str(c))) for n, c in enumerate(cents)), return_exceptions=True
            )
            assert all(r is None or isinstance(r, ConditionFailed) for r in results)
            paid = [c for c, r in zip(cents, results, strict=True) if r is None]
            balance, ledger = await balance_and_ledger(store)
            assert balance == opening - sum(paid, Decimal("0.00")) >= 0
            assert ledger == [f"TXN#{n:04d}" for n, r in enumerate(results) if r is None]
            refused = [c for c, r in zip(cents, results, strict=True) if r is not None]
            assert all(c > balance for c in refused)  # balances only fall: refused then, refused now
        finally:
            await store.close()

    asyncio.run(scenario())


# --- the store thread ----------------------------------------------------------------------------


async def test_the_store_thread_answers_in_order_and_skips_calls_nobody_waits_for(store: SQLiteStore) -> None:
    release = pause(store)
    ran: list[int] = []

    def record(n: int) -> int:
        ran.append(n)
        if n == 3:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return n * 10

    calls = [asyncio.ensure_future(store._run(record, n)) for n in range(5)]
    await asyncio.sleep(0)
    calls[1].cancel()
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 0 and results[2] == 20 and results[4] == 40
    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[3], StoreError) and "disk I/O error" in str(results[3])
    assert ran == [0, 2, 3, 4]  # in order; the cancelled call never ran


async def test_a_closed_store_stops_its_thread_and_refuses_reads(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "t.db"))
    await store.create_tables()
    thread = store._executor._thread
    assert thread is not None and thread.is_alive()
    await store.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        await store.get(T, k("U", "BAL"))
