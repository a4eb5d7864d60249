"""`order_wire` writes the same bytes as `OrderResponse.of` through `jsonio.dumps` (decision 0029)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.entities.order import (
    Order,
    OrderResponse,
    OrderStatus,
    OrderType,
    TimeInForce,
    facts_wire,
    order_facts,
    order_wire,
)
from cnop.common.events import Event, wire_payload
from cnop.common.jsonio import dumps, dumps_native
from cnop.services.order.schemas import OrderEnvelope

MOMENT = datetime(2026, 12, 4, 4, 30, 1, 234567, tzinfo=UTC)

decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e12"), max_value=Decimal("1e12"))
maybe_decimals = st.none() | decimals
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC) | st.just(None)
).map(lambda moment: moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
texts = st.text(max_size=12)


def order(**fields: object) -> Order:
    base: dict[str, object] = {
        "order_id": "01JEXAMPLEORDER0000000000",
        "username": "ada",
        "order_type": OrderType.MARKET_BUY,
        "asset_id": "BTC",
        "quantity": Decimal("0.0001"),
        "status": OrderStatus.COMPLETED,
        "executed_price": Decimal("67250.12"),
        "total_amount": Decimal("6.73"),
        "created_at": MOMENT,
        "updated_at": MOMENT,
        "executed_at": MOMENT,
    }
    base.update(fields)
    return Order.model_validate(base)


def model_bytes(o: Order) -> bytes:
    return dumps(OrderEnvelope(data=OrderResponse.of(o)))


def test_a_market_buy_and_a_resting_sell_are_written_as_the_model_writes_them() -> None:
    buy = order(price=Decimal("70000"))
    rest = order(
        order_type=OrderType.TRAILING_STOP_SELL,
        status=OrderStatus.QUEUED,
        executed_price=None,
        total_amount=None,
        executed_at=None,
        trail_percent=Decimal("2.5000"),
        trail_anchor=Decimal("1E+3"),
        held_amount=Decimal("0.00100"),
        time_in_force=TimeInForce.GTD,
        expires_at=MOMENT + timedelta(days=1),
        client_order_id="bot-1.a:b",
        reason="ünïcode \u2028 \n \"quoted\" \\",
    )
    for o in (buy, rest):
        assert dumps_native({"data": order_wire(o)}) == model_bytes(o)
        assert dumps(order_wire(o)) == dumps(OrderResponse.of(o))


@settings(max_examples=300, deadline=None)
@given(
    order_type=st.sampled_from(list(OrderType)),
    status=st.sampled_from(list(OrderStatus)),
    time_in_force=st.sampled_from(list(TimeInForce)),
    quantity=decimals,
    amounts=st.tuples(*(maybe_decimals for _ in range(7))),
    held=decimals,
    created=moments,
    others=st.tuples(*(st.none() | moments for _ in range(3))),
    client_order_id=st.none() | texts,
    reason=st.none() | texts,
)
def test_any_order_is_written_as_the_model_writes_it(
    order_type: OrderType,
    status: OrderStatus,
    time_in_force: TimeInForce,
    quantity: Decimal,
    amounts: tuple[Decimal | None, ...],
    held: Decimal,
    created: datetime,
    others: tuple[datetime | None, ...],
    client_order_id: str | None,
    reason: str | None,
) -> None:
    price, stop, trail_amount, trail_percent, executed, total, pnl = amounts
    o = order(
        order_type=order_type,
        status=status,
        time_in_force=time_in_force,
        quantity=quantity,
        price=price,
        stop_price=stop,
        trail_amount=trail_amount,
        trail_percent=trail_percent,
        executed_price=executed,
        total_amount=total,
        realized_pnl=pnl,
        trail_anchor=stop,
        held_amount=held,
        created_at=created,
        updated_at=created,
        expires_at=others[0],
        executed_at=others[1],
        cancelled_at=others[2],
        client_order_id=client_order_id,
        reason=reason,
    )
    assert dumps_native({"data": order_wire(o)}) == model_bytes(o)


def test_an_event_builds_its_payload_when_first_read_and_keeps_it() -> None:
    o = order()
    event = Event.later("1", "order.completed", order_facts(o), facts_wire, 1.0, (1, 0))
    first = event.data
    assert first == wire_payload(o)
    assert event.data is first
    assert "username" not in first
    assert event == Event("1", "order.completed", wire_payload(o), 1.0, (1, 0))
