"""Price history kept across a restart (both engines), the price stream's bounds, number formatting."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cnop.common.clock import FakeClock
from cnop.common.events import StreamConnections
from cnop.market.history import HOURS, MINUTES, PriceHistoryRecorder, StorePriceHistory
from cnop.market.prices import PriceBook, Tick
from cnop.services.web import format as fmt
from tests.conftest import StoreFactory
from tests.support.web_app import open_web
from tests.support.wire import read


async def test_price_history_survives_a_restart_bounded_and_downsampled(store_factory: StoreFactory) -> None:
    start = datetime(2026, 11, 1, 12, 0, 5, tzinfo=UTC)
    clock = FakeClock(start)
    store = store_factory()
    await store.create_tables()
    book = PriceBook(clock)
    recorder = PriceHistoryRecorder(book, StorePriceHistory(store), clock, flush_seconds=10)
    # Three ticks a minute for 90 minutes: kept as one point per minute (the last) and per hour.
    for minute in range(90):
        for second in (0, 20, 40):
            at = start + timedelta(minutes=minute, seconds=second)
            clock.advance((at - clock.now()).total_seconds())
            price = Decimal(50000 + minute) + Decimal(second) / 100
            recorder.note(book.apply([Tick("BTC", price, at)]))
        if minute % 10 == 9:
            assert await recorder.flush() == 1
    assert await recorder.flush() == 0
    await store.close()

    # A new process: a fresh book (the catalogue price now), the store read back into it.
    now = start + timedelta(minutes=95)
    reopened = store_factory()
    clock = FakeClock(now)
    book = PriceBook(clock)
    book.apply([Tick("BTC", Decimal("49000"), now)])
    restored = await PriceHistoryRecorder(book, StorePriceHistory(reopened), clock, flush_seconds=10).restore()
    history = book.history("BTC")
    assert restored == len(history) - 1
    # Only the minutes flushed by each flush are kept (the latest tick at flush time), plus hours.
    assert 9 <= restored <= 20
    assert history[-1].price == Decimal("49000") and history[-1].at == now
    assert all(a.at < b.at for a, b in itertools.pairwise(history))
    assert history[0].at >= start and Decimal(50009) <= history[-2].price <= Decimal("50089.40")
    assert book.current("BTC").price == Decimal("49000")  # type: ignore[union-attr]
    stats = book.stats("BTC")
    assert stats is not None and stats.high_24h >= Decimal(50089)
    # Bounded by construction: a slot per minute of a day and per hour of a month, whatever ran.
    items = [item async for item in _all_points(reopened)]
    assert len(items) == restored + 1 or len(items) <= MINUTES.slots + HOURS.slots
    assert {item["asset_id"] for item in items} == {"BTC"}
    await reopened.close()


async def _all_points(store):  # type: ignore[no-untyped-def]
    from cnop.common.database import keys
    from cnop.common.database.store import query_all

    async for item in query_all(store, keys.INVENTORY, keys.PRICE_HISTORY_PK):
        yield item


async def test_a_slot_is_reused_when_its_time_comes_round(store_factory: StoreFactory) -> None:
    store = store_factory()
    await store.create_tables()
    history = StorePriceHistory(store)
    day_one = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    await history.save(MINUTES, [Tick("ETH", Decimal("3000.5"), day_one)])
    await history.save(MINUTES, [Tick("ETH", Decimal("3100.25"), day_one + MINUTES.span)])
    points = await history.load(day_one - timedelta(days=1))
    assert [(p.price, p.at) for p in points] == [(Decimal("3100.25"), day_one + MINUTES.span)]
    assert await history.load(day_one + timedelta(days=2)) == []
    await store.close()


async def test_price_stream_refuses_bad_asset_lists_and_too_many_connections(store_factory: StoreFactory) -> None:
    web = await open_web(store_factory(), price_stream_max_assets=3, price_stream_connections_per_ip=2)
    try:
        client = web.browser(client_ip="203.0.113.5")
        for query, words in (
            ({}, "assets"),
            ({"assets": ","}, "at least one"),
            ({"assets": "BTC,ETH,SOL,DOGE"}, "at most 3"),
            ({"assets": "BTC,NOPE"}, "unknown asset NOPE"),
            ({"assets": "BTC,B-C"}, "not an asset id"),
        ):
            r = await client.get("/api/v1/prices/stream", params=query)
            assert r.status_code == 422, query
            assert r.headers["content-type"].startswith("application/problem+json")
            assert words in r.text, (query, r.text)
        connections = web.container.price_stream_connections
        assert connections.acquire("203.0.113.5") and connections.acquire("203.0.113.5")
        r = await client.get("/api/v1/prices/stream", params={"assets": "BTC"})
        assert r.status_code == 429 and read(r)["code"] == "rate_limited" and "Retry-After" in r.headers
        connections.release("203.0.113.5")
        assert connections.acquire("203.0.113.5")
    finally:
        await web.close()


def test_stream_connections_are_counted_per_ip() -> None:
    caps = StreamConnections(per_ip=1)
    assert caps.acquire("a") and not caps.acquire("a") and caps.acquire("b")
    caps.release("a")
    assert caps.acquire("a")


def test_numbers_are_formatted_exactly_at_their_scale() -> None:
    assert fmt.usd(Decimal("1234.5")) == "$1,234.50"
    assert fmt.usd(Decimal("-0.004")) == "$0.00"
    assert fmt.usd(Decimal("-3.105")) == "−$3.10"  # half to even
    assert fmt.signed_usd(Decimal("24.685")) == "+$24.68"
    assert fmt.price(Decimal("67250")) == "$67,250.00"
    assert fmt.price(Decimal("0.123456789")) == "$0.12345679"
    assert fmt.price(Decimal("0.16")) == "$0.1600"
    assert fmt.quantity(Decimal("0.02"), 8) == "0.02000000"
    assert fmt.quantity(Decimal("12345.6"), 2) == "12,345.60"
    assert fmt.percent(Decimal("1.2345")) == "+1.23%"
    assert fmt.percent(Decimal("-0.001")) == "0.00%"
    assert fmt.compact_usd(Decimal("1325161250000")) == "$1.33T"
    assert fmt.field_message("Password", "String should have at least 12 characters") == (
        "Password must have at least 12 characters"
    )
    assert fmt.field_message("First name", "Field required") == "First name is required"
    assert fmt.field_message("Amount", "must be greater than 0") == "Amount must be greater than 0"
    assert fmt.field_message("Email", "The daily limit is 10 USD") == "The daily limit is 10 USD"
    # 0.1 + 0.2 is exactly 0.3 here: no float ever touches the amount.
    assert fmt.usd(Decimal("0.1") + Decimal("0.2")) == "$0.30"
