"""The price book: current prices, freshness, 24h/7d/30d figures, bounded history, subscribers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cnop.common.clock import FakeClock
from cnop.common.exceptions import PriceUnavailable
from cnop.market.catalogue import load_catalogue
from cnop.market.prices import PriceBook, Tick

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tick(price: str, seconds: float, asset_id: str = "BTC") -> Tick:
    return Tick(asset_id, Decimal(price), at(seconds))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# --- ticks and seeding ---------------------------------------------------------------------------


def test_a_tick_refuses_a_float_price_and_a_naive_time() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        Tick("BTC", 67250.0, T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        Tick("BTC", Decimal(1), datetime(2026, 1, 1))


def test_a_seeded_book_prices_every_catalogue_asset_at_its_snapshot_now(clock: FakeClock) -> None:
    catalogue = load_catalogue()

    book = PriceBook.seed(catalogue, clock)

    assert book.asset_ids == sorted(a.asset_id for a in catalogue)
    for asset in catalogue:
        assert book.current(asset.asset_id) == Tick(asset.asset_id, asset.price_usd, T0)
        assert book.fresh_price(asset.asset_id, max_age_seconds=30) == asset.price_usd
    assert book.last_applied_at == T0


# --- freshness -----------------------------------------------------------------------------------


def test_a_price_is_fresh_up_to_the_max_age_and_stale_after_it(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("67000.50", 0)])

    clock.advance(30)
    assert book.fresh_price("BTC", max_age_seconds=30) == Decimal("67000.50")

    clock.advance(0.001)
    with pytest.raises(PriceUnavailable) as raised:
        book.fresh_price("BTC", max_age_seconds=30)
    assert raised.value.code == "price_unavailable"
    assert raised.value.status == 503
    assert book.current("BTC") is not None  # stale, not forgotten


def test_an_asset_without_a_price_is_unavailable(clock: FakeClock) -> None:
    book = PriceBook(clock)

    assert book.current("BTC") is None
    assert book.stats("BTC") is None
    assert book.history("BTC") == []
    with pytest.raises(PriceUnavailable):
        book.fresh_price("BTC", max_age_seconds=30)


# --- applying ticks ------------------------------------------------------------------------------


def test_invalid_and_out_of_order_ticks_are_skipped_and_not_published(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100", 10)])
    queue = book.subscribe()

    accepted = book.apply(
        [
            Tick("BTC", Decimal("NaN"), at(11)),
            Tick("BTC", Decimal("Infinity"), at(11)),
            Tick("BTC", Decimal(0), at(11)),
            Tick("BTC", Decimal(-5), at(11)),
            tick("90", 5),  # older than the current tick
            tick("101", 12),
        ]
    )

    assert accepted == [tick("101", 12)]
    assert queue.get_nowait() == [tick("101", 12)]
    assert book.current("BTC") == tick("101", 12)


def test_a_tick_at_the_same_moment_replaces_the_current_price(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100", 10)])
    book.apply([tick("100.5", 10)])

    assert book.current("BTC") == tick("100.5", 10)


# --- 24h, 7d and 30d figures ---------------------------------------------------------------------


def test_24h_change_is_exact_from_two_ticks_a_day_apart(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100.00", 0)])
    book.apply([tick("112.34", 86_400)])

    stats = book.stats("BTC")

    assert stats is not None
    assert stats.price == Decimal("112.34")
    assert stats.price_change_24h == Decimal("12.34")
    assert stats.price_change_percentage_24h == Decimal("12.3400")
    assert stats.high_24h == Decimal("112.34")
    assert stats.low_24h == Decimal("100.00")
    assert stats.last_updated == at(86_400)
    assert stats.price_change_percentage_7d is None
    assert stats.price_change_percentage_30d is None


def test_24h_reference_is_the_price_in_effect_a_day_before_the_latest_tick(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100", 0)])
    book.apply([tick("90", 3_600)])
    book.apply([tick("120", 7_200)])
    book.apply([tick("110", 3_600 + 86_400)])

    stats = book.stats("BTC")

    assert stats is not None
    assert stats.price_change_24h == Decimal(20)  # 110 - 90: the 100 is older than the window
    assert stats.price_change_percentage_24h == Decimal("22.2222")
    assert (stats.high_24h, stats.low_24h) == (Decimal(120), Decimal(90))


def test_24h_change_of_a_young_history_is_measured_from_its_first_price(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("200", 0)])
    book.apply([tick("150", 600)])

    stats = book.stats("BTC")

    assert stats is not None
    assert stats.price_change_24h == Decimal(-50)
    assert stats.price_change_percentage_24h == Decimal("-25.0000")
    assert (stats.high_24h, stats.low_24h) == (Decimal(200), Decimal(150))


def test_a_freshly_seeded_asset_shows_no_change(clock: FakeClock) -> None:
    stats = PriceBook.seed(load_catalogue(), clock).stats("ETH")

    assert stats is not None
    assert stats.price_change_24h == 0
    assert stats.price_change_percentage_24h == 0
    assert stats.high_24h == stats.low_24h == stats.price


def test_24h_figures_survive_second_ticks_that_overflow_the_raw_history(clock: FakeClock) -> None:
    book = PriceBook(clock, history_size=100)
    # A tick every 5 s for 25 hours, the price rising a cent a tick.
    count = 25 * 3_600 // 5
    for i in range(count + 1):
        book.apply([Tick("BTC", Decimal(100) + Decimal(i) / 100, at(5 * i))])

    stats = book.stats("BTC")

    assert stats is not None
    latest = Decimal(100) + Decimal(count) / 100
    exact_reference = Decimal(100) + Decimal(720) / 100  # the tick at T0 + 1 h
    # The minute tier keeps the last tick of each minute, so the reference is at most a minute early.
    assert exact_reference - Decimal("0.12") <= latest - stats.price_change_24h <= exact_reference
    assert stats.high_24h == latest
    assert exact_reference - Decimal("0.12") <= stats.low_24h <= exact_reference
    assert stats.price_change_percentage_7d is None
    points = book.history("BTC")
    assert len(points) <= 100 + 24 * 60 + 2 + 30 * 24 + 2
    assert [p.at for p in points] == sorted({p.at for p in points})


def test_7d_and_30d_changes_appear_once_history_covers_them(clock: FakeClock) -> None:
    book = PriceBook(clock, history_size=10)
    # Hourly ticks for 31 days: price = 1000 + hour.
    hours = 31 * 24
    for hour in range(hours + 1):
        book.apply([Tick("ETH", Decimal(1000 + hour), at(3_600 * hour))])

    stats = book.stats("ETH")

    assert stats is not None
    now_price = Decimal(1000 + hours)
    week_ago = Decimal(1000 + hours - 7 * 24)
    month_ago = Decimal(1000 + hours - 30 * 24)
    assert stats.price_change_24h == Decimal(24)
    assert stats.price_change_percentage_7d == ((now_price - week_ago) * 100 / week_ago).quantize(
        Decimal("0.0001")
    )
    assert stats.price_change_percentage_30d == ((now_price - month_ago) * 100 / month_ago).quantize(
        Decimal("0.0001")
    )


def test_stats_follow_each_new_tick(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100", 0)])
    before = book.stats("BTC")
    assert book.stats("BTC") is before  # unchanged history, same figures

    book.apply([tick("125", 60)])
    after = book.stats("BTC")

    assert after is not None
    assert (after.price, after.price_change_24h, after.high_24h) == (Decimal(125), Decimal(25), Decimal(125))
    assert after.price_change_percentage_24h == Decimal("25.0000")


def test_7d_change_is_none_until_a_week_of_history_exists(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("100", 0)])
    book.apply([tick("105", 6 * 86_400)])

    stats = book.stats("BTC")

    assert stats is not None
    assert stats.price_change_percentage_7d is None
    assert stats.price_change_percentage_30d is None


# --- history -------------------------------------------------------------------------------------


def test_history_downsamples_to_the_last_tick_of_each_interval(clock: FakeClock) -> None:
    book = PriceBook(clock)
    for i in range(60):  # every 10 s for 10 minutes
        book.apply([Tick("BTC", Decimal(i), at(10 * i))])

    per_minute = book.history("BTC", interval_seconds=60)

    assert [p.price for p in per_minute] == [Decimal(5 + 6 * m) for m in range(10)]
    assert [p.at for p in per_minute] == [at(60 * m + 50) for m in range(10)]


def test_history_since_keeps_only_later_ticks(clock: FakeClock) -> None:
    book = PriceBook(clock)
    for i in range(10):
        book.apply([Tick("BTC", Decimal(i), at(i))])

    assert [p.price for p in book.history("BTC", since=at(7))] == [Decimal(7), Decimal(8), Decimal(9)]
    assert book.history("BTC", since=at(100)) == []


def test_history_stitches_coarse_tiers_before_the_raw_ticks(clock: FakeClock) -> None:
    book = PriceBook(clock, history_size=10)
    for i in range(720):  # every 10 s for 2 hours
        book.apply([Tick("BTC", Decimal(i), at(10 * i))])

    points = book.history("BTC")

    assert points[-10:] == [Tick("BTC", Decimal(i), at(10 * i)) for i in range(710, 720)]
    older = points[:-10]
    assert all(p.at.second == 50 for p in older)  # the last tick of each minute
    assert len(older) == 118  # minutes 0..117; minute 118 is partly in the raw ticks
    assert [p.at for p in points] == sorted(p.at for p in points)


def test_history_refuses_a_non_positive_interval(clock: FakeClock) -> None:
    book = PriceBook(clock)
    book.apply([tick("1", 0)])

    with pytest.raises(ValueError, match="positive"):
        book.history("BTC", interval_seconds=0)


# --- subscribers ---------------------------------------------------------------------------------


def test_subscribers_get_every_batch_and_a_full_queue_drops_its_oldest(clock: FakeClock) -> None:
    book = PriceBook(clock)
    slow = book.subscribe(maxsize=2)
    other = book.subscribe()

    for i in range(3):
        book.apply([tick(str(100 + i), i)])

    assert slow.qsize() == 2
    assert slow.get_nowait() == [tick("101", 1)]
    assert slow.get_nowait() == [tick("102", 2)]
    assert other.qsize() == 3
    assert book.dropped_batches == 1


def test_an_unsubscribed_queue_receives_nothing_more(clock: FakeClock) -> None:
    book = PriceBook(clock)
    queue = book.subscribe()
    book.unsubscribe(queue)
    book.unsubscribe(queue)  # twice is harmless

    book.apply([tick("1", 0)])

    assert queue.empty()
    assert book.subscriber_count == 0


def test_the_version_moves_on_whenever_what_readers_see_changes(clock: FakeClock) -> None:
    book = PriceBook(clock)
    start = book.version
    book.apply([tick("100", 0)])
    assert book.version > start
    seen = book.version
    book.apply([tick("-1", 1), tick("90", -5)])  # invalid and out of order: nothing accepted, nothing changed
    stats = book.stats("BTC")
    assert book.version == seen and stats is not None and stats.price == Decimal(100)
    book.apply([tick("100", 0)])  # the same moment again is accepted (and may change the figures)
    assert book.version > seen
    seen = book.version
    assert book.restore("BTC", [tick("80", -3600)]) == 1  # older history changes the 24-hour figures
    assert book.version > seen
    seen = book.version
    assert book.restore("BTC", []) == 0
    assert book.version == seen
    book.forget(["BTC"])
    assert book.version > seen and book.stats("BTC") is None
