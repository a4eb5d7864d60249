"""The compat adapter's pure mappings: ids, symbols, timeframes, error codes, status names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from cnop.common.entities.order import OrderStatus
from cnop.common.exceptions import ValidationFailed
from cnop.common.ids import new_id
from cnop.services.alpaca.errors import alpaca_body, alpaca_error
from cnop.services.alpaca.ids import account_uuid, asset_uuid, order_id_from, order_uuid
from cnop.services.alpaca.market_data import Timeframe, parse_timeframe
from cnop.services.alpaca.render import STATUS
from cnop.services.alpaca.symbols import asset_id_of, candidates, compact, pair


def test_an_order_id_renders_as_one_uuid_and_comes_back_from_it() -> None:
    order_id = new_id()
    rendered = order_uuid(order_id)
    assert str(uuid.UUID(rendered)) == rendered
    assert order_id_from(rendered) == order_id
    assert order_id_from(rendered.upper()) == order_id
    assert order_id_from(order_id) == order_id  # our own form is accepted too
    assert order_id_from("not-an-id") is None
    assert order_id_from("") is None


def test_asset_and_account_uuids_are_stable_and_distinct() -> None:
    assert asset_uuid("BTC") == asset_uuid("BTC") != asset_uuid("ETH")
    assert account_uuid("alice_01") != asset_uuid("alice_01")
    assert uuid.UUID(asset_uuid("BTC")).version == 5


@pytest.mark.parametrize(
    ("symbol", "asset"),
    [("BTC/USD", "BTC"), ("BTCUSD", "BTC"), ("btc/usd", "BTC"), ("BTC", "BTC"), (" ETH/USD ", "ETH"),
     ("USDCUSD", "USDC"), ("BTC/EUR", None), ("ETH/BTC", None), ("USD", "USD"), ("B!/USD", None), ("", None)],
)
def test_symbols_in_every_accepted_form_name_their_asset(symbol: str, asset: str | None) -> None:
    assert asset_id_of(symbol) == asset


def test_a_symbol_ending_in_usd_may_also_be_an_asset_of_that_name() -> None:
    assert candidates("TUSD") == ["T", "TUSD"]
    assert candidates("TUSD/USD") == ["TUSD"]
    assert pair("BTC") == "BTC/USD" and compact("BTC") == "BTCUSD"


@pytest.mark.parametrize(
    ("text", "frame"),
    [("1Min", Timeframe(1, "Min")), ("15Min", Timeframe(15, "Min")), ("1T", Timeframe(1, "Min")),
     ("4Hour", Timeframe(4, "Hour")), ("1H", Timeframe(1, "Hour")), ("1Day", Timeframe(1, "Day")),
     ("1Week", Timeframe(1, "Week")), ("3Month", Timeframe(3, "Month")), ("12Month", Timeframe(12, "Month"))],
)
def test_timeframes_alpaca_offers_parse(text: str, frame: Timeframe) -> None:
    assert parse_timeframe(text) == frame


@pytest.mark.parametrize("text", ["0Min", "60Min", "24Hour", "2Day", "2Week", "5Month", "1Sec", "Min", "1min", ""])
def test_timeframes_alpaca_does_not_offer_are_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_timeframe(text)


def test_bars_start_on_their_bucket_boundaries() -> None:
    moment = datetime(2026, 11, 26, 13, 47, 31, tzinfo=UTC)  # a Thursday
    assert Timeframe(15, "Min").bucket(moment) == datetime(2026, 11, 26, 13, 45, tzinfo=UTC)
    assert Timeframe(4, "Hour").bucket(moment) == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert Timeframe(1, "Day").bucket(moment) == datetime(2026, 11, 26, tzinfo=UTC)
    assert Timeframe(1, "Week").bucket(moment) == datetime(2026, 11, 23, tzinfo=UTC)  # Monday
    assert Timeframe(3, "Month").bucket(moment) == datetime(2026, 10, 1, tzinfo=UTC)
    assert Timeframe(1, "Month").bucket(moment) == datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (422, "validation_error", (422, 40010001)),
        (422, "order_value_exceeds_limit", (422, 40010001)),
        (422, "insufficient_funds", (403, 40310000)),
        (422, "insufficient_holdings", (403, 40310000)),
        (403, "insufficient_scope", (403, 40310000)),
        (409, "order_not_cancellable", (422, 42210000)),
        (401, "invalid_api_key", (401, 40110000)),
        (404, "order_not_found", (404, 40410000)),
        (405, "method_not_allowed", (405, 40510000)),
        (413, "payload_too_large", (413, 41310000)),
        (429, "rate_limited", (429, 42910000)),
        (503, "price_unavailable", (503, 50310000)),
        (500, "internal_error", (500, 50010000)),
        (500, None, (500, 50010000)),
    ],
)
def test_native_errors_map_to_alpacas_status_and_code(status: int, code: str | None, expected: tuple[int, int]) -> None:
    assert alpaca_error(status, code) == expected


def test_the_message_names_the_fields_and_nothing_else_is_kept() -> None:
    problem = {"type": "x", "title": "t", "status": 422, "detail": "d", "code": "validation_error",
               "request_id": "r", "errors": [{"field": "qty", "message": "must be > 0"}]}
    assert alpaca_body(problem, 422) == (422, {"code": 40010001, "message": "qty: must be > 0"})
    assert alpaca_body({"detail": "Order not found", "code": "order_not_found"}, 404) == (
        404, {"code": 40410000, "message": "Order not found"}
    )
    assert alpaca_body({}, 500) == (500, {"code": 50010000, "message": "error"})


def test_every_native_status_has_an_alpaca_name() -> None:
    assert set(STATUS) == set(OrderStatus)
    assert STATUS[OrderStatus.QUEUED] == "new" and STATUS[OrderStatus.COMPLETED] == "filled"
    assert STATUS[OrderStatus.CANCELLED] == "canceled" and STATUS[OrderStatus.FAILED] == "rejected"
    assert STATUS[OrderStatus.EXPIRED] == "expired"
