"""The order domain's pure rules: trigger maths, trailing stops, reservations, rounding, the value cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus, OrderType, TimeInForce
from cnop.common.exceptions import InvalidOrder, OrderValueExceedsLimit, ValidationFailed
from cnop.services.order import rules
from cnop.services.order.rules import ABOVE, BELOW, BuyFunding, Reservation, Trigger

D = Decimal
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LIMIT = D("1000000")
MARGIN = D("0.05")


def request(order_type: str, quantity: str = "0.1", **fields: Any) -> OrderCreate:
    return OrderCreate(order_type=OrderType(order_type), asset_id="BTC", quantity=quantity, **fields)


def order(order_type: str, *, stage: str | None = None, **fields: Any) -> Order:
    values: dict[str, Any] = {name: D(value) for name, value in fields.items()}
    return Order(
        order_id="01JTESTORDER0000000000000",
        username="alice",
        order_type=OrderType(order_type),
        asset_id="BTC",
        quantity=D("0.1"),
        status=OrderStatus.QUEUED,
        stage=stage,
        created_at=NOW,
        updated_at=NOW,
        **values,
    )


# --- rounding and the value cap ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cost", "proceeds"),
    [
        (D("3900.001"), D("3900.01"), D("3900.00")),
        (D("3900.009"), D("3900.01"), D("3900.00")),
        (D("3900"), D("3900.00"), D("3900.00")),
        (D("0.004"), D("0.01"), D("0.00")),
    ],
)
def test_a_buyer_pays_rounded_up_and_a_seller_receives_rounded_down(
    value: Decimal, cost: Decimal, proceeds: Decimal
) -> None:
    assert rules.buy_cost(value) == cost and str(rules.buy_cost(value)) == str(cost)
    assert rules.sell_proceeds(value) == proceeds and str(rules.sell_proceeds(value)) == str(proceeds)
    assert rules.trade_value(OrderSide.BUY, value) == cost
    assert rules.trade_value(OrderSide.SELL, value) == proceeds


def test_the_value_cap_refuses_above_the_limit_with_one_message() -> None:
    assert rules.check_order_value(D("1000000"), LIMIT) == D("1000000")
    with pytest.raises(OrderValueExceedsLimit) as refused:
        rules.check_order_value(D("1000000.004"), LIMIT)
    assert refused.value.detail == "Order value 1000000.00 USD exceeds the limit of 1000000 USD"


@pytest.mark.parametrize(
    ("cost", "held", "funding"),
    [
        (D("3900.00"), D("4000.00"), BuyFunding(D("3900.00"), D("0.00"), D("100.00"))),
        (D("4000.00"), D("4000.00"), BuyFunding(D("4000.00"), D("0.00"), D("0.00"))),
        (D("4100.50"), D("4000.00"), BuyFunding(D("4000.00"), D("100.50"), D("0.00"))),
        (D("12.34"), D("0"), BuyFunding(D("0"), D("12.34"), D("0"))),
    ],
)
def test_a_buy_is_paid_from_the_reservation_first_and_the_rest_refunded(
    cost: Decimal, held: Decimal, funding: BuyFunding
) -> None:
    assert rules.fund_buy(cost, held) == funding


@pytest.mark.parametrize(
    ("units", "basis", "quantity", "out"),
    [
        (D("3"), D("100.00"), D("1"), D("33.33")),  # 33.333.. to the cent
        (D("3"), D("100.00"), D("2"), D("66.67")),
        (D("8"), D("1.00"), D("1"), D("0.12")),  # 0.125: half-even rounds to 0.12
        (D("8"), D("3.00"), D("1"), D("0.38")),  # 0.375: half-even rounds to 0.38
        (D("3"), D("100.00"), D("3"), D("100.00")),  # everything: all of the basis, no rounding left behind
        (D("0.3"), D("100.01"), D("0.3"), D("100.01")),
    ],
)
def test_the_cost_basis_leaves_at_the_average_cost(
    units: Decimal, basis: Decimal, quantity: Decimal, out: Decimal
) -> None:
    got = rules.cost_basis_out(units, basis, quantity)
    assert got == out and str(got) == str(out)


# --- triggers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "trigger", "price", "expected"),
    [
        (BELOW, D("40000"), D("40000"), True),
        (BELOW, D("40000"), D("39999.99"), True),
        (BELOW, D("40000"), D("40000.01"), False),
        (ABOVE, D("60000"), D("60000"), True),
        (ABOVE, D("60000"), D("60000.01"), True),
        (ABOVE, D("60000"), D("59999.99"), False),
    ],
)
def test_a_trigger_is_crossed_at_or_past_its_price(
    direction: str, trigger: Decimal, price: Decimal, expected: bool
) -> None:
    assert rules.crossed(direction, trigger, price) is expected


@pytest.mark.parametrize(
    ("kind", "stage", "fields", "trigger"),
    [
        ("limit_buy", None, {"price": "40000"}, Trigger(BELOW, D("40000"))),
        ("limit_sell", None, {"price": "60000"}, Trigger(ABOVE, D("60000"))),
        ("take_profit_buy", None, {"stop_price": "41000"}, Trigger(BELOW, D("41000"))),
        ("take_profit_sell", None, {"stop_price": "61000"}, Trigger(ABOVE, D("61000"))),
        ("stop_loss_buy", None, {"stop_price": "55000"}, Trigger(ABOVE, D("55000"))),
        ("stop_loss_sell", None, {"stop_price": "45000"}, Trigger(BELOW, D("45000"))),
        ("stop_limit_buy", "stop", {"stop_price": "55000", "price": "56000"}, Trigger(ABOVE, D("55000"))),
        ("stop_limit_buy", "limit", {"stop_price": "55000", "price": "56000"}, Trigger(BELOW, D("56000"))),
        ("stop_limit_sell", "stop", {"stop_price": "45000", "price": "44000"}, Trigger(BELOW, D("45000"))),
        ("stop_limit_sell", "limit", {"stop_price": "45000", "price": "44000"}, Trigger(ABOVE, D("44000"))),
        ("trailing_stop_sell", None, {"stop_price": "47500"}, Trigger(BELOW, D("47500"))),
        ("trailing_stop_buy", None, {"stop_price": "52500"}, Trigger(ABOVE, D("52500"))),
    ],
)
def test_every_order_waits_where_its_type_and_stage_say(
    kind: str, stage: str | None, fields: dict[str, str], trigger: Trigger
) -> None:
    assert rules.trigger_of(order(kind, stage=stage, **fields)) == trigger


@pytest.mark.parametrize(
    ("kind", "anchor", "amount", "percent", "stop"),
    [
        (OrderType.TRAILING_STOP_SELL, D("50000"), D("2500"), None, D("47500.00000000")),
        (OrderType.TRAILING_STOP_BUY, D("50000"), D("2500"), None, D("52500.00000000")),
        (OrderType.TRAILING_STOP_SELL, D("50000"), None, D("5"), D("47500.00000000")),
        (OrderType.TRAILING_STOP_BUY, D("50000"), None, D("5"), D("52500.00000000")),
        # away from the market at the 8th place: a sell's stop rounds down, a buy's up
        (OrderType.TRAILING_STOP_SELL, D("1.23456789"), None, D("3"), D("1.19753085")),
        (OrderType.TRAILING_STOP_BUY, D("1.23456789"), None, D("3"), D("1.27160493")),
    ],
)
def test_a_trailing_stop_keeps_its_distance_from_the_best_price(
    kind: OrderType, anchor: Decimal, amount: Decimal | None, percent: Decimal | None, stop: Decimal
) -> None:
    got = rules.trailing_stop(kind, anchor, amount, percent)
    assert got == stop and str(got) == str(stop)


def test_a_trailing_order_starts_with_the_stop_of_its_anchor_and_others_keep_theirs() -> None:
    trailing = request("trailing_stop_sell", trail_percent="5")
    assert rules.initial_stop(trailing, D("50000")) == D("47500.00000000")
    assert rules.initial_stop(request("stop_loss_sell", stop_price="45000"), None) == D("45000")
    assert rules.initial_stop(request("limit_buy", price="40000"), None) is None


# --- placement --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "market", "expected"),
    [
        ({"order_type": "limit_buy", "price": "40000"}, "40000", True),
        ({"order_type": "limit_buy", "price": "40000"}, "40000.01", False),
        ({"order_type": "limit_sell", "price": "60000"}, "60000", True),
        ({"order_type": "limit_sell", "price": "60000"}, "59999", False),
        ({"order_type": "take_profit_sell", "stop_price": "60000"}, "61000", True),
        ({"order_type": "take_profit_buy", "stop_price": "40000"}, "41000", False),
        ({"order_type": "stop_loss_sell", "stop_price": "45000"}, "40000", False),  # never marketable
    ],
)
def test_a_limit_the_market_satisfies_is_marketable(body: dict[str, str], market: str, expected: bool) -> None:
    assert rules.marketable(request(**body), D(market)) is expected


def test_a_stop_on_the_wrong_side_of_the_market_is_refused() -> None:
    with pytest.raises(InvalidOrder) as refused:
        rules.check_placement(request("stop_loss_sell", stop_price="50000"), D("50000"), NOW)
    assert refused.value.detail == "stop_price must be below the market price 50000; this stop would trigger at once"
    with pytest.raises(InvalidOrder):
        rules.check_placement(request("stop_limit_buy", stop_price="49000", price="49500"), D("50000"), NOW)
    rules.check_placement(request("stop_loss_sell", stop_price="49999.99"), D("50000"), NOW)  # fine


def test_placement_rules_on_time_in_force_and_trailing_distance() -> None:
    with pytest.raises(ValidationFailed) as past:
        rules.check_placement(
            request("limit_buy", price="40000", time_in_force="gtd", expires_at=NOW + timedelta(seconds=1)),
            D("50000"),
            NOW,
        )
    assert past.value.errors == [{"field": "expires_at", "message": "must be in the future"}]
    rules.check_placement(
        request("limit_buy", price="40000", time_in_force="gtd", expires_at=NOW + timedelta(seconds=2)), D("50000"), NOW
    )
    with pytest.raises(ValidationFailed) as ioc:
        rules.check_placement(
            request("stop_loss_sell", stop_price="40000", time_in_force=TimeInForce.IOC), D("50000"), NOW
        )
    assert ioc.value.errors[0]["field"] == "time_in_force"
    with pytest.raises(ValidationFailed) as trail:
        rules.check_placement(request("trailing_stop_sell", trail_amount="50000"), D("50000"), NOW)
    assert trail.value.errors == [{"field": "trail_amount", "message": "must be below the market price 50000"}]


@pytest.mark.parametrize(
    ("side", "market", "bound", "worse"),
    [
        (OrderSide.BUY, D("50000.01"), D("50000"), True),
        (OrderSide.BUY, D("50000"), D("50000"), False),
        (OrderSide.SELL, D("49999.99"), D("50000"), True),
        (OrderSide.SELL, D("50000"), D("50000"), False),
    ],
)
def test_a_market_order_bound_refuses_a_worse_market(
    side: OrderSide, market: Decimal, bound: Decimal, worse: bool
) -> None:
    assert rules.worse_than_bound(side, market, bound) is worse


@pytest.mark.parametrize(
    ("body", "market", "reserved"),
    [
        ({"order_type": "limit_buy", "price": "40000"}, "50000", Reservation(D("4000.00"), None)),
        (
            {"order_type": "limit_buy", "price": "40000.005", "quantity": "0.3"},
            "50000",
            Reservation(D("12000.01"), None),
        ),
        (
            {"order_type": "stop_limit_buy", "stop_price": "55000", "price": "56000"},
            "50000",
            Reservation(D("5600.00"), None),
        ),
        ({"order_type": "take_profit_buy", "stop_price": "41000"}, "50000", Reservation(D("4100.00"), None)),
        # stop and trailing buys fill at the market: their stop plus the 5 % margin
        ({"order_type": "stop_loss_buy", "stop_price": "55000"}, "50000", Reservation(D("5775.00"), None)),
        ({"order_type": "trailing_stop_buy", "trail_amount": "2500"}, "50000", Reservation(D("5512.50"), D("50000"))),
        ({"order_type": "trailing_stop_buy", "trail_percent": "1.5"}, "50000", Reservation(D("5328.75"), D("50000"))),
        # sells hold their units
        ({"order_type": "limit_sell", "price": "60000"}, "50000", Reservation(D("0.1"), None)),
        ({"order_type": "trailing_stop_sell", "trail_percent": "5"}, "50000", Reservation(D("0.1"), D("50000"))),
    ],
)
def test_a_resting_order_reserves_the_most_it_may_need(
    body: dict[str, str], market: str, reserved: Reservation
) -> None:
    kind = body.pop("order_type")
    got = rules.reservation(request(kind, **body), D(market), stop_buy_margin=MARGIN, value_limit=LIMIT)
    assert got == reserved and str(got.held) == str(reserved.held)


def test_a_reservation_above_the_value_cap_is_refused() -> None:
    big = request("stop_loss_buy", quantity="20", stop_price="50000")  # 20 * 50000 * 1.05 = 1 050 000
    with pytest.raises(OrderValueExceedsLimit) as refused:
        rules.reservation(big, D("40000"), stop_buy_margin=MARGIN, value_limit=LIMIT)
    assert refused.value.detail == "Order value 1050000.00 USD exceeds the limit of 1000000 USD"
