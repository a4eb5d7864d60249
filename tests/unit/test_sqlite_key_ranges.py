"""Prefix queries on the SQLite engine are key ranges: bounded by the prefix, not by the partition."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore, prefix_end
from cnop.common.database.store import Put, SortKey

# SQLite stores TEXT as UTF-8: any code point but the surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)


@settings(deadline=None)
@given(prefix=TEXT, other=TEXT)
def test_the_range_of_a_prefix_holds_exactly_the_strings_that_start_with_it(prefix: str, other: str) -> None:
    end = prefix_end(prefix)
    for candidate in (other, prefix + other, prefix[:-1] + other):
        inside = prefix.encode() <= candidate.encode() and (end is None or candidate.encode() < end.encode())
        assert inside == candidate.startswith(prefix)


def test_prefix_ends_step_over_the_surrogates_and_the_highest_code_point() -> None:
    assert prefix_end("HOLDING#") == "HOLDING$"
    assert prefix_end("a\ud7ff") == "a\ue000"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("") is None


async def test_a_prefix_query_reads_rows_of_its_prefix_only(tmp_path: Path) -> None:
    # 5,000 ledger entries next to 3 holdings: listing the holdings steps over no ledger entry.
    store = SQLiteStore(str(tmp_path / "r.db"))
    try:
        await store.create_tables()
        for start in range(0, 5000, 100):
            await store.transact(
                [Put(keys.USERS, {"pk": "USER#u", "sk": f"TXN#{n:06d}"}) for n in range(start, start + 100)]
            )
        await store.transact([Put(keys.USERS, {"pk": "USER#u", "sk": f"HOLDING#{a}"}) for a in ("BTC", "ETH", "SOL")])
        conn = store._connection()
        steps: list[int] = []
        conn.set_progress_handler(lambda: steps.append(1) and 0, 1)  # called every VM instruction
        page = await store.query(keys.USERS, "USER#u", sk=SortKey.prefix("HOLDING#"))
        conn.set_progress_handler(None, 0)
        assert [item["sk"] for item in page.items] == ["HOLDING#BTC", "HOLDING#ETH", "HOLDING#SOL"]
        assert len(steps) < 500  # a scan of the partition takes over 5,000 row visits
    finally:
        await store.close()
