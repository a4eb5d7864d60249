"""The storage port's conformance suite: every engine must pass it unchanged."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    AttrExists,
    AttrNotExists,
    Check,
    Delete,
    Eq,
    Exists,
    Ge,
    Gt,
    InvalidCursor,
    ItemStore,
    Le,
    Lt,
    Ne,
    Not,
    NotExists,
    Or,
    Put,
    SortKey,
    Update,
)
from cnop.common.exceptions import ConditionFailed
from tests.conftest import StoreFactory

T = keys.USERS


def k(pk: str, sk: str) -> dict[str, str]:
    return {"pk": pk, "sk": sk}


async def test_put_then_get_round_trips_every_type_exactly(store: ItemStore) -> None:
    item = {
        "pk": "A",
        "sk": "1",
        "name": "Ada",
        "amount": Decimal("1000.10"),
        "tiny": Decimal("0.000000000000000001"),
        "big": Decimal("123456789012345678901234.5"),
        "count": 3,
        "flag": True,
        "off": False,
        "nothing": None,
        "nested": {"price": Decimal("65000.5"), "tags": ["x", "y"]},
        "list": [Decimal("1.5"), "s"],
    }
    await store.transact([Put(T, item)])
    got = await store.get(T, k("A", "1"))
    assert got is not None
    assert got["amount"] == Decimal("1000.10") and str(got["amount"]) == "1000.10"
    assert got["tiny"] == Decimal("0.000000000000000001")
    assert got["big"] == Decimal("123456789012345678901234.5")
    assert got["count"] == Decimal(3) and isinstance(got["count"], Decimal)
    assert got["flag"] is True and got["off"] is False and got["nothing"] is None
    assert got["nested"] == {"price": Decimal("65000.5"), "tags": ["x", "y"]}
    assert got["list"] == [Decimal("1.5"), "s"]
    assert got["name"] == "Ada"


async def test_missing_item_is_none(store: ItemStore) -> None:
    assert await store.get(T, k("nobody", "x")) is None
    assert await store.batch_get(T, [k("nobody", "x")]) == []


async def test_floats_are_refused(store: ItemStore) -> None:
    with pytest.raises(TypeError):
        await store.transact([Put(T, {"pk": "A", "sk": "1", "x": 0.1})])
    assert await store.get(T, k("A", "1")) is None


class _Ratio(float):
    pass


@pytest.mark.parametrize(
    "value",
    [0.1, _Ratio(0.5), [Decimal(1), 0.1], {"inner": [{"deep": 2.5}]}, (Decimal(1), "x", 1.0)],
    ids=["float", "float-subclass", "in-list", "nested", "in-tuple"],
)
async def test_floats_are_refused_wherever_they_hide(store: ItemStore, value: object) -> None:
    with pytest.raises(TypeError):
        await store.transact([Put(T, {"pk": "A", "sk": "1", "x": value})])
    with pytest.raises(TypeError):
        await store.transact([Update(T, k("A", "2"), set={"x": value})])
    assert await store.get(T, k("A", "1")) is None
    assert await store.get(T, k("A", "2")) is None


async def test_put_if_not_exists_refuses_second_put(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "A", "sk": "1", "v": 1}, NotExists())])
    with pytest.raises(ConditionFailed) as err:
        await store.transact([Put(T, {"pk": "A", "sk": "1", "v": 2}, NotExists())])
    assert err.value.index == 0
    got = await store.get(T, k("A", "1"))
    assert got is not None and got["v"] == 1


async def test_third_op_failing_changes_nothing_and_reports_index_2(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "U", "sk": "BAL", "available": Decimal("5.00")})])
    ops = [
        Put(T, {"pk": "U", "sk": "TXN#1", "amount": Decimal("-10.00")}),
        Update(T, k("U", "COUNTER"), add={"n": 1}),
        Update(T, k("U", "BAL"), add={"available": Decimal("-10.00")}, condition=Ge("available", Decimal("10.00"))),
        Put(T, {"pk": "U", "sk": "TXN#2", "amount": Decimal("1")}),
    ]
    with pytest.raises(ConditionFailed) as err:
        await store.transact(ops)
    assert err.value.index == 2
    assert await store.get(T, k("U", "TXN#1")) is None
    assert await store.get(T, k("U", "COUNTER")) is None
    assert await store.get(T, k("U", "TXN#2")) is None
    bal = await store.get(T, k("U", "BAL"))
    assert bal is not None and bal["available"] == Decimal("5.00")


async def test_all_ops_apply_together(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "U", "sk": "DEL", "x": "gone"})])
    await store.transact(
        [
            Put(T, {"pk": "U", "sk": "P", "x": "new"}, NotExists()),
            Update(T, k("U", "BAL"), set={"currency": "USD"}, add={"available": Decimal("12.34")}),
            Delete(T, k("U", "DEL"), Exists()),
            Check(T, k("U", "P2"), NotExists()),
        ]
    )
    assert (await store.get(T, k("U", "P"))) == {"pk": "U", "sk": "P", "x": "new"}
    assert (await store.get(T, k("U", "BAL"))) == {
        "pk": "U",
        "sk": "BAL",
        "currency": "USD",
        "available": Decimal("12.34"),
    }
    assert await store.get(T, k("U", "DEL")) is None


async def test_update_set_add_remove(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "A", "sk": "1", "a": "x", "b": Decimal("1.5"), "c": "drop"})])
    await store.transact([Update(T, k("A", "1"), set={"a": "y"}, add={"b": Decimal("-0.25"), "d": 2}, remove=("c",))])
    assert await store.get(T, k("A", "1")) == {"pk": "A", "sk": "1", "a": "y", "b": Decimal("1.25"), "d": Decimal(2)}


async def test_update_with_exists_condition_does_not_create(store: ItemStore) -> None:
    with pytest.raises(ConditionFailed) as err:
        await store.transact([Update(T, k("A", "1"), set={"a": 1}, condition=Exists())])
    assert err.value.index == 0
    assert await store.get(T, k("A", "1")) is None


async def test_check_failure_blocks_the_other_ops(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "O", "sk": "1", "status": "completed"})])
    with pytest.raises(ConditionFailed) as err:
        await store.transact(
            [Update(T, k("O", "2"), set={"x": 1}), Check(T, k("O", "1"), Eq("status", "queued"))]
        )
    assert err.value.index == 1
    assert await store.get(T, k("O", "2")) is None


async def test_delete_with_condition(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "A", "sk": "1", "status": "queued"})])
    with pytest.raises(ConditionFailed):
        await store.transact([Delete(T, k("A", "1"), Eq("status", "done"))])
    assert await store.get(T, k("A", "1")) is not None
    await store.transact([Delete(T, k("A", "1"), Eq("status", "queued"))])
    assert await store.get(T, k("A", "1")) is None


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (Eq("s", "a"), True),
        (Eq("s", "b"), False),
        (Ne("s", "b"), True),
        (Eq("n", Decimal("10")), True),
        (Eq("n", 10), True),
        (Lt("n", Decimal("10.01")), True),
        (Lt("n", 10), False),
        (Le("n", 10), True),
        (Gt("n", Decimal("9.99")), True),
        (Gt("n", 10), False),
        (Ge("n", 10), True),
        (Ge("n", Decimal("10.000001")), False),
        (Ge("missing", 0), False),
        (Eq("s", 1), False),
        (AttrExists("s"), True),
        (AttrExists("missing"), False),
        (AttrNotExists("missing"), True),
        (AttrNotExists("s"), False),
        (And(Eq("s", "a"), Ge("n", 5)), True),
        (And(Exists()), True),
        (And(Eq("s", "b")), False),
        (Or(Ge("n", 5)), True),
        (And(And(Exists(), Ge("n", 1))), True),
        (Not(And(Exists())), False),
        (And(Eq("s", "a"), Ge("n", 11)), False),
        (Or(Eq("s", "b"), Ge("n", 5)), True),
        (Or(Eq("s", "b"), Ge("n", 11)), False),
        (Not(Eq("s", "b")), True),
        (Or(AttrNotExists("total"), Le("total", 5)), True),
        (Exists(), True),
        (NotExists(), False),
        (Eq("flag", True), True),
    ],
)
async def test_conditions(store: ItemStore, condition: object, expected: bool) -> None:
    await store.transact([Put(T, {"pk": "C", "sk": "1", "s": "a", "n": Decimal("10.00"), "flag": True})])
    op = Check(T, k("C", "1"), condition)  # type: ignore[arg-type]
    if expected:
        await store.transact([op, Put(T, {"pk": "C", "sk": "marker"})])
        assert await store.get(T, k("C", "marker")) is not None
    else:
        with pytest.raises(ConditionFailed) as err:
            await store.transact([Put(T, {"pk": "C", "sk": "marker"}), op])
        assert err.value.index == 1
        assert await store.get(T, k("C", "marker")) is None


async def test_refuses_two_ops_on_one_item_and_oversized_transactions(store: ItemStore) -> None:
    with pytest.raises(ValueError):
        await store.transact([Put(T, {"pk": "A", "sk": "1"}), Update(T, k("A", "1"), set={"x": 1})])
    with pytest.raises(ValueError):
        await store.transact([Put(T, {"pk": "A", "sk": str(i)}) for i in range(101)])
    with pytest.raises(ValueError):
        await store.transact([])
    assert await store.get(T, k("A", "1")) is None


async def test_a_transaction_of_100_ops_applies(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "B", "sk": f"{i:03d}"}) for i in range(100)])
    page = await store.query(T, "B", limit=100)
    assert len(page.items) == 100 and page.next_cursor is None


async def test_batch_get_returns_only_existing(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "A", "sk": str(i), "i": i}) for i in range(5)])
    got = await store.batch_get(T, [k("A", "1"), k("A", "3"), k("A", "9")])
    assert sorted(item["i"] for item in got) == [1, 3]


async def _fill(store: ItemStore, pk: str, count: int, **extra: object) -> None:
    for start in range(0, count, 100):
        await store.transact(
            [Put(T, {"pk": pk, "sk": f"ITEM#{i:05d}", "i": i, **extra}) for i in range(start, min(count, start + 100))]
        )


@pytest.mark.parametrize("descending", [False, True])
async def test_cursor_pages_through_1000_items_without_duplicates_or_gaps(store: ItemStore, descending: bool) -> None:
    await _fill(store, "P", 1000)
    await store.transact([Put(T, {"pk": "P", "sk": "OTHER#1"}), Put(T, {"pk": "Q", "sk": "ITEM#00001"})])
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await store.query(T, "P", sk=SortKey.prefix("ITEM#"), limit=37, cursor=cursor, descending=descending)
        assert len(page.items) <= 37
        seen += [int(item["i"]) for item in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = list(range(1000))
    assert seen == (expected[::-1] if descending else expected)
    assert pages == 28  # 27 full pages of 37 and one of 1; no empty trailing page


async def test_sort_key_ranges(store: ItemStore) -> None:
    await _fill(store, "R", 20)
    between = await store.query(T, "R", sk=SortKey.between("ITEM#00005", "ITEM#00009"))
    assert [int(i["i"]) for i in between.items] == [5, 6, 7, 8, 9]
    below = await store.query(T, "R", sk=SortKey.lt("ITEM#00003"))
    assert [int(i["i"]) for i in below.items] == [0, 1, 2]
    upto = await store.query(T, "R", sk=SortKey.le("ITEM#00003"), descending=True, limit=2)
    assert [int(i["i"]) for i in upto.items] == [3, 2] and upto.next_cursor is not None
    above = await store.query(T, "R", sk=SortKey.gt("ITEM#00017"))
    assert [int(i["i"]) for i in above.items] == [18, 19]
    from_ = await store.query(T, "R", sk=SortKey.ge("ITEM#00018"))
    assert [int(i["i"]) for i in from_.items] == [18, 19]


async def test_prefix_queries_return_exactly_the_prefixed_keys_among_their_neighbours(store: ItemStore) -> None:
    # Neighbours on both sides of each prefix in key order, characters that are wildcards
    # elsewhere, and the highest code point; in both directions, paged.
    sks = [
        "H", "HOLDING", "HOLDING\"", "HOLDING#", "HOLDING#BTC", "HOLDING#ETH", "HOLDING#\U0010ffff", "HOLDING$",
        "HOLDINGS", "I", "TX%", "TX%1", "TX_", "TX_1", "TXN", "TXN#01", "TXN#02", "TXN#03", "TXO",
        "Z\U0010ffff", "Z\U0010ffff\U0010ffff", "Z\U0010ffffa", "\U0010ffff", "\U0010ffff\U0010ffff",
    ]
    await store.transact([Put(T, {"pk": "P", "sk": sk, "gsi1pk": "PFX", "gsi1sk": sk}) for sk in sks])
    for prefix in ["HOLDING#", "HOLDING", "TX%", "TX_", "TXN#", "Z\U0010ffff", "\U0010ffff", "H", "Y"]:
        expected = sorted((sk for sk in sks if sk.startswith(prefix)), key=lambda sk: sk.encode())
        for index in (None, "gsi1"):
            pk = "P" if index is None else "PFX"
            for descending in (False, True):
                got, cursor = [], None
                while True:
                    page = await store.query(
                        T, pk, sk=SortKey.prefix(prefix), index=index, limit=2, cursor=cursor, descending=descending
                    )
                    got += [item["sk"] for item in page.items]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                assert got == (expected[::-1] if descending else expected), (prefix, index, descending)


async def test_string_index_query_pages_across_partitions(store: ItemStore) -> None:
    for user in range(3):
        await store.transact(
            [
                Put(T, {"pk": f"USER#{user}", "sk": f"X#{i}", "gsi1pk": "ALL", "gsi1sk": f"{i:03d}", "u": user, "i": i})
                for i in range(10)
            ]
        )
    seen: list[tuple[int, int]] = []
    cursor = None
    while True:
        page = await store.query(T, "ALL", index="gsi1", limit=7, cursor=cursor)
        seen += [(int(it["i"]), int(it["u"])) for it in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 30 and len(set(seen)) == 30
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)


async def test_numeric_index_orders_by_number_and_ranges_exactly(store: ItemStore) -> None:
    prices = ["9", "10", "10.5", "100", "65000.12345678", "0.00000001", "10.49999999"]
    await store.transact(
        [
            Put(T, {"pk": f"USER#{n}", "sk": "ORDER#1", "gsi2pk": "TRIGGER#BTC#below", "gsi2sk": Decimal(p)})
            for n, p in enumerate(prices)
        ]
    )
    page = await store.query(T, "TRIGGER#BTC#below", index="gsi2", limit=100)
    assert [it["gsi2sk"] for it in page.items] == [
        Decimal(p) for p in ["0.00000001", "9", "10", "10.49999999", "10.5", "100", "65000.12345678"]
    ]
    crossed = await store.query(T, "TRIGGER#BTC#below", index="gsi2", sk=SortKey.ge(Decimal("10.5")))
    assert [it["gsi2sk"] for it in crossed.items] == [Decimal("10.5"), Decimal("100"), Decimal("65000.12345678")]
    not_crossed = await store.query(T, "TRIGGER#BTC#below", index="gsi2", sk=SortKey.lt(Decimal("10.5")), descending=True)
    assert [it["gsi2sk"] for it in not_crossed.items] == [
        Decimal(p) for p in ["10.49999999", "10", "9", "0.00000001"]
    ]


async def test_numeric_index_pages_through_ties(store: ItemStore) -> None:
    for start in range(0, 250, 50):
        await store.transact(
            [
                Put(T, {"pk": f"USER#{n}", "sk": "ORDER#1", "gsi2pk": "TRIG", "gsi2sk": Decimal(n % 5)})
                for n in range(start, start + 50)
            ]
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.query(T, "TRIG", index="gsi2", limit=9, cursor=cursor, sk=SortKey.ge(1))
        seen += [it["pk"] for it in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 200 and len(set(seen)) == 200


async def test_removing_index_attributes_takes_the_item_out_of_the_index(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "U", "sk": "O1", "gsi2pk": "TRIG", "gsi2sk": Decimal("5")})])
    await store.transact([Update(T, k("U", "O1"), set={"status": "done"}, remove=("gsi2pk", "gsi2sk"))])
    assert (await store.query(T, "TRIG", index="gsi2")).items == []


async def test_expired_items_read_as_absent(store: ItemStore) -> None:
    past = Decimal(int(time.time()) - 10)
    future = Decimal(int(time.time()) + 3600)
    await store.transact(
        [
            Put(T, {"pk": "E", "sk": "old", "expires_at": past}),
            Put(T, {"pk": "E", "sk": "new", "expires_at": future}),
        ]
    )
    assert await store.get(T, k("E", "old")) is None
    assert await store.get(T, k("E", "new")) is not None
    assert [i["sk"] for i in (await store.query(T, "E")).items] == ["new"]
    assert [i["sk"] for i in await store.batch_get(T, [k("E", "old"), k("E", "new")])] == ["new"]
    # An expired item does not block a NotExists put (idempotency records rely on it).
    await store.transact([Put(T, {"pk": "E", "sk": "old", "v": 2}, NotExists())])
    got = await store.get(T, k("E", "old"))
    assert got is not None and got["v"] == 2


async def test_invalid_cursor_is_refused(store: ItemStore) -> None:
    with pytest.raises(InvalidCursor):
        await store.query(T, "A", cursor="not-a-cursor!!")


async def test_50_concurrent_withdrawals_of_10_from_100_exactly_10_succeed(store: ItemStore) -> None:
    await store.transact([Put(T, {"pk": "W", "sk": "BAL", "available": Decimal("100.00")})])

    async def withdraw(n: int) -> bool:
        try:
            await store.transact(
                [
                    Update(T, k("W", "BAL"), add={"available": Decimal("-10.00")}, condition=Ge("available", Decimal("10.00"))),
                    Put(T, {"pk": "W", "sk": f"TXN#{n:03d}", "amount": Decimal("-10.00")}),
                ]
            )
        except ConditionFailed as exc:
            assert exc.index == 0
            return False
        return True

    results = await asyncio.gather(*(withdraw(n) for n in range(50)))
    assert results.count(True) == 10
    bal = await store.get(T, k("W", "BAL"))
    assert bal is not None and bal["available"] == Decimal("0.00")
    ledger = await store.query(T, "W", sk=SortKey.prefix("TXN#"), limit=100)
    assert len(ledger.items) == 10
    assert sum(i["amount"] for i in ledger.items) == Decimal("-100.00")


async def test_8_store_instances_racing_never_double_spend(store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(8)]
    await stores[0].create_tables()
    await stores[0].transact([Put(T, {"pk": "D", "sk": "BAL", "available": Decimal("35.00")})])

    async def spend(s: ItemStore, n: int) -> bool:
        try:
            await s.transact(
                [
                    Update(T, k("D", "BAL"), add={"available": Decimal("-5.00")}, condition=Ge("available", Decimal("5.00"))),
                    Put(T, {"pk": "D", "sk": f"TXN#{n:03d}", "amount": Decimal("-5.00")}),
                ]
            )
        except ConditionFailed:
            return False
        return True

    results = await asyncio.gather(*(spend(stores[n % 8], n) for n in range(40)))
    assert results.count(True) == 7
    bal = await stores[3].get(T, k("D", "BAL"))
    assert bal is not None and bal["available"] == Decimal("0.00")
    for s in stores:
        await s.close()


async def test_update_init_sets_only_missing_attributes(store: ItemStore) -> None:
    await store.transact([Update(T, k("I", "1"), set={"a": 1}, init={"created": "first"})])
    await store.transact([Update(T, k("I", "1"), set={"a": 2}, init={"created": "second", "other": "x"})])
    assert await store.get(T, k("I", "1")) == {
        "pk": "I", "sk": "1", "a": Decimal(2), "created": "first", "other": "x"
    }


# --- concurrent transactions (the SQLite engine commits them in groups) --------------------------


async def test_a_failed_condition_among_concurrent_transactions_leaves_the_others_committed(store: ItemStore) -> None:
    # Every third transaction writes its account, then claims a key that is taken: only it fails,
    # and its first write is undone with it.
    await store.transact([Put(T, {"pk": "G", "sk": "TAKEN", "by": "seed"})])

    async def transfer(n: int) -> int | None:
        claim = "TAKEN" if n % 3 == 0 else f"CLAIM#{n:03d}"
        try:
            await store.transact(
                [
                    Update(T, k("G", f"ACC#{n:03d}"), add={"balance": Decimal("1.10")}),
                    Put(T, {"pk": "G", "sk": claim, "by": n}, NotExists()),
                ]
            )
        except ConditionFailed as exc:
            return exc.index
        return None

    results = await asyncio.gather(*(transfer(n) for n in range(30)))
    assert results == [1 if n % 3 == 0 else None for n in range(30)]
    page = await store.query(T, "G", limit=100)
    stored = {item["sk"]: item for item in page.items}
    assert set(stored) == {"TAKEN"} | {f"ACC#{n:03d}" for n in range(30) if n % 3} | {
        f"CLAIM#{n:03d}" for n in range(30) if n % 3
    }
    assert stored["TAKEN"]["by"] == "seed"
    assert all(stored[f"ACC#{n:03d}"]["balance"] == Decimal("1.10") for n in range(30) if n % 3)


async def test_a_write_is_read_back_as_soon_as_its_transaction_returns(store: ItemStore) -> None:
    # Reads interleaved with concurrent writes: each writer reads its own committed item and the
    # counter at least at its own increment; a refused transaction's items are never read.
    await store.transact([Put(T, {"pk": "R", "sk": "COUNT", "n": 0})])

    async def write_then_read(n: int) -> None:
        refused = n % 4 == 0
        ops = [
            Update(T, k("R", "COUNT"), add={"n": 1}),
            Put(T, {"pk": "R", "sk": f"ITEM#{n:03d}", "amount": Decimal("0.10")}),
        ]
        if refused:
            ops.append(Check(T, k("R", "NEVER"), Exists()))
        try:
            await store.transact(ops)
        except ConditionFailed as exc:
            assert refused and exc.index == 2
        else:
            assert not refused
            item = await store.get(T, k("R", f"ITEM#{n:03d}"))
            assert item is not None and item["amount"] == Decimal("0.10")
        assert (await store.get(T, k("R", f"ITEM#{n:03d}")) is None) == refused

    await asyncio.gather(*(write_then_read(n) for n in range(40)))
    count = await store.get(T, k("R", "COUNT"))
    assert count is not None and count["n"] == Decimal(30)
    items = await store.query(T, "R", sk=SortKey.prefix("ITEM#"), limit=100)
    assert [item["sk"] for item in items.items] == [f"ITEM#{n:03d}" for n in range(40) if n % 4]


async def test_no_update_is_lost_under_concurrent_increments_and_versioned_writes(store: ItemStore) -> None:
    # 60 numeric adds, and 20 read-modify-writes guarded by a version (each retried until it
    # wins), all at once on one item: every one of them is in the result exactly once.
    await store.transact([Put(T, {"pk": "L", "sk": "C", "adds": Decimal("0.00"), "total": 0, "version": 0})])

    async def add(n: int) -> None:
        await store.transact([Update(T, k("L", "C"), add={"adds": Decimal("0.01")})])

    async def read_modify_write(n: int) -> int:
        for attempt in range(1000):
            item = await store.get(T, k("L", "C"))
            assert item is not None
            try:
                await store.transact(
                    [
                        Update(
                            T,
                            k("L", "C"),
                            set={"total": item["total"] + n, "version": item["version"] + 1},
                            condition=Eq("version", item["version"]),
                        )
                    ]
                )
            except ConditionFailed:
                continue
            return attempt
        raise AssertionError("a versioned write never won")

    await asyncio.gather(*(add(n) for n in range(60)), *(read_modify_write(n) for n in range(1, 21)))
    item = await store.get(T, k("L", "C"))
    assert item is not None
    assert item["adds"] == Decimal("0.60")
    assert item["total"] == Decimal(sum(range(1, 21)))
    assert item["version"] == Decimal(20)
