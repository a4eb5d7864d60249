"""Replaying historical prices from CSV: grouping, ordering, pacing, and tolerance of bad rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.market.prices import Tick
from cnop.market.sources.replay import ReplayBatch, ReplayPriceSource, parse_replay_csv, parse_replay_timestamp

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
T1 = datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
T2 = datetime(2024, 6, 1, 0, 1, tzinfo=UTC)
T3 = datetime(2024, 6, 1, 0, 2, tzinfo=UTC)

GOOD_CSV = """timestamp,asset_id,price
2024-06-01T00:01:00Z,BTC,67300.10
2024-06-01T00:00:00Z,BTC,67250.00
2024-06-01T00:00:00Z,eth,3810.5
1717200060,ETH,3811.25
2024-06-01T00:02:00+00:00,BTC,67280
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(text, encoding="utf-8")
    return path


async def collect(source: ReplayPriceSource, limit: int = 100) -> list[list[Tick]]:
    batches: list[list[Tick]] = []
    async with asyncio.timeout(5):
        async for batch in source.ticks():
            batches.append(batch)
            if len(batches) >= limit:
                await source.close()
    return batches


def test_rows_are_grouped_by_timestamp_in_time_order_with_exact_prices() -> None:
    batches = parse_replay_csv(GOOD_CSV)

    assert batches == [
        ReplayBatch(T1, (("BTC", Decimal("67250.00")), ("ETH", Decimal("3810.5")))),
        ReplayBatch(T2, (("BTC", Decimal("67300.10")), ("ETH", Decimal("3811.25")))),
        ReplayBatch(T3, (("BTC", Decimal("67280")),)),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01T00:00:00Z", T1),
        ("2024-06-01T02:00:00+02:00", T1),
        ("2024-06-01T00:00:00", T1),
        ("1717200000", T1),
        ("1717200000.5", datetime(2024, 6, 1, 0, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_timestamps_are_rfc3339_or_epoch_seconds(text: str, expected: datetime) -> None:
    assert parse_replay_timestamp(text) == expected


def test_malformed_rows_are_skipped_and_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    text = """timestamp,asset_id,price
2024-06-01T00:00:00Z,BTC,67250.00
yesterday,BTC,1
2024-06-01T00:00:00Z,BTC!,1
2024-06-01T00:00:00Z,BTC,abc
2024-06-01T00:00:00Z,BTC,-5
2024-06-01T00:00:00Z,BTC,0
2024-06-01T00:00:00Z,BTC,NaN
2024-06-01T00:00:00Z,BTC,Infinity
2024-06-01T00:00:00Z,BTC,1e100
2024-06-01T00:00:00Z,BTC
2024-06-01T00:00:00Z,BTC,1,extra
2024-06-01T00:00:00Z,NOPE,1
99999999999999999999,BTC,1

2024-06-01T00:01:00Z,ETH,1e3
"""
    with caplog.at_level(logging.WARNING, logger="cnop.market.sources.replay"):
        batches = parse_replay_csv(text, known_assets={"BTC", "ETH"})

    assert batches == [
        ReplayBatch(T1, (("BTC", Decimal("67250.00")),)),
        ReplayBatch(T2, (("ETH", Decimal(1000)),)),
    ]
    assert str(batches[1].prices[0][1]) == "1000"
    skipped = [r for r in caplog.records if "skipped line" in r.getMessage()]
    assert len(skipped) == 12
    assert any("skipped 12 malformed rows" in r.getMessage() for r in caplog.records)


def test_a_missing_header_column_is_fatal() -> None:
    with pytest.raises(ValueError, match="missing price"):
        parse_replay_csv("timestamp,asset_id\n2024-06-01T00:00:00Z,BTC\n")
    with pytest.raises(ValueError, match="header"):
        parse_replay_csv("")


def test_columns_may_come_in_any_order() -> None:
    batches = parse_replay_csv("price,timestamp,asset_id\n1.5,1717200000,ADA\n")

    assert batches == [ReplayBatch(T1, (("ADA", Decimal("1.5")),))]


async def test_replay_emits_each_batch_in_order_stamped_with_the_clock(tmp_path: Path) -> None:
    source = ReplayPriceSource(write(tmp_path, GOOD_CSV), clock=FakeClock(NOW), interval_seconds=0)

    batches = await collect(source)

    assert batches == [
        [Tick("BTC", Decimal("67250.00"), NOW), Tick("ETH", Decimal("3810.5"), NOW)],
        [Tick("BTC", Decimal("67300.10"), NOW), Tick("ETH", Decimal("3811.25"), NOW)],
        [Tick("BTC", Decimal("67280"), NOW)],
    ]


async def test_replay_can_keep_the_files_own_timestamps(tmp_path: Path) -> None:
    source = ReplayPriceSource(
        write(tmp_path, GOOD_CSV), clock=FakeClock(NOW), interval_seconds=0, restamp=False
    )

    batches = await collect(source)

    assert [batch[0].at for batch in batches] == [T1, T2, T3]


async def test_a_looping_replay_starts_again_after_its_last_batch(tmp_path: Path) -> None:
    source = ReplayPriceSource(write(tmp_path, GOOD_CSV), clock=FakeClock(NOW), interval_seconds=0, loop=True)

    batches = await collect(source, limit=7)

    assert len(batches) == 7
    assert batches[3] == batches[0]
    assert batches[6] == batches[0]


async def test_speed_paces_by_the_files_own_gaps(tmp_path: Path) -> None:
    # One-minute gaps at 6000x are 10 ms each.
    source = ReplayPriceSource(write(tmp_path, GOOD_CSV), clock=FakeClock(NOW), speed=6000)
    loop = asyncio.get_running_loop()

    started = loop.time()
    batches = await collect(source)

    assert len(batches) == 3
    assert 0.015 <= loop.time() - started < 2


def test_a_replay_that_cannot_work_fails_at_construction(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    with pytest.raises(FileNotFoundError):
        ReplayPriceSource(tmp_path / "missing.csv", clock=clock)
    with pytest.raises(ValueError, match="no valid rows"):
        ReplayPriceSource(write(tmp_path, "timestamp,asset_id,price\nbad,BTC,1\n"), clock=clock)
    with pytest.raises(ValueError, match="restamp"):
        ReplayPriceSource(write(tmp_path, GOOD_CSV), clock=clock, loop=True, restamp=False)
