"""Resting orders: placement and reservation, triggers, fills, cancel, expiry (issue: Resting orders)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from cnop.audit import run_audit
from cnop.common.clock import FakeClock, isoformat
from cnop.common.events import InProcessEventBus
from cnop.market.prices import Tick
from cnop.services.order.triggers import trigger_engine
from tests.conftest import StoreFactory
from tests.support.api import Api, Snapshot, assert_problem, funded_user, open_api, snapshot
from tests.support.house import set_house_units
from tests.support.wire import read

D = Decimal


async def tick(api: Api, price: str, asset_id: str = "BTC") -> None:
    """Move the price and run the trigger engine over the tick (the background engine may race it: both are safe)."""
    api.set_price(asset_id, price)
    await api.container.triggers.process([Tick(asset_id, D(price), api.container.clock.now())])


async def order_status(api: Api, headers: dict[str, str], order_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/orders/{order_id}", headers=headers)
    assert r.status_code == 200
    return dict(read(r)["data"])


def ledger_types(s: Snapshot) -> list[str]:
    return sorted(e.transaction_type for e in s.ledger)


async def place(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.order(headers, asset_id=body.pop("asset_id", "BTC"), **body)
    assert r.status_code == 201, r.text
    return dict(read(r)["data"])


async def audit_ok(api: Api) -> None:
    report = await run_audit(api.container.store)
    assert report.ok, report.violations


@pytest.mark.parametrize(
    ("body", "hold", "quiet", "crossing", "fill_price", "cost"),
    [
        ({"order_type": "limit_buy", "price": "40000"}, "4000.00", "45000", "39000", "39000", "3900.00"),
        ({"order_type": "take_profit_buy", "stop_price": "45000"}, "4500.00", "46000", "44000", "44000", "4400.00"),
        ({"order_type": "stop_loss_buy", "stop_price": "55000"}, "5775.00", "54000", "56000", "56000", "5600.00"),
        ({"order_type": "trailing_stop_buy", "trail_percent": "2"}, "5355.00", "50900", "51000", "51000", "5100.00"),
    ],
)
async def test_resting_buys_hold_then_fill_once_with_refund(
    api: Api, body: dict[str, Any], hold: str, quiet: str, crossing: str, fill_price: str, cost: str
) -> None:
    username, headers = await funded_user(api, "10000")
    api.set_price("BTC", "50000")
    order = await place(api, headers, quantity="0.1", **body)
    assert order["status"] == "queued" and order["held_amount"] == hold  # USD: two places
    assert order["quantity"] == "0.1" and order["executed_price"] is None and order["total_amount"] is None
    assert order["price_bound"] is None and order["price"] == body.get("price")
    assert order["trail_percent"] == body.get("trail_percent") and order["trail_amount"] is None
    stops = {"limit_buy": None, "take_profit_buy": "45000", "stop_loss_buy": "55000", "trailing_stop_buy": "51000"}
    assert order["stop_price"] == stops[body["order_type"]]
    assert order["trail_anchor"] == ("50000" if body["order_type"] == "trailing_stop_buy" else None)
    s = await snapshot(api, username)
    assert s.balance.available == D("10000") - D(hold) and s.balance.held == D(hold)
    assert ledger_types(s) == ["deposit", "order_hold"]
    await tick(api, quiet)
    assert (await order_status(api, headers, order["order_id"]))["status"] == "queued"
    assert (await snapshot(api, username)).balance == s.balance
    await tick(api, crossing)
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "completed" and done["executed_price"] == fill_price
    assert done["total_amount"] == cost and done["price"] == body.get("price")  # a resting order keeps its limit
    s = await snapshot(api, username)
    assert s.balance.available == D("10000") - D(cost) and s.balance.held == 0
    assert ledger_types(s) == ["deposit", "order_hold", "order_payment", "order_refund"]
    refund = next(e for e in s.ledger if e.transaction_type == "order_refund")
    assert refund.amount == D(hold) - D(cost)
    assert s.holding.available == D("0.1") and s.holding.cost_basis == D(cost)
    await tick(api, crossing)  # crossing again fills nothing more
    assert len((await snapshot(api, username)).orders) == 1
    assert ledger_types(await snapshot(api, username)) == ["deposit", "order_hold", "order_payment", "order_refund"]
    await audit_ok(api)


@pytest.mark.parametrize(
    ("body", "quiet", "crossing", "fill_price", "proceeds"),
    [
        ({"order_type": "limit_sell", "price": "55000"}, "54000", "56000", "56000", "5600.00"),
        ({"order_type": "take_profit_sell", "stop_price": "55000"}, "54999", "55000", "55000", "5500.00"),
        ({"order_type": "stop_loss_sell", "stop_price": "45000"}, "46000", "44000", "44000", "4400.00"),
        ({"order_type": "trailing_stop_sell", "trail_amount": "1000"}, "49500", "48900", "48900", "4890.00"),
    ],
)
async def test_resting_sells_hold_units_then_fill_once(
    api: Api, body: dict[str, Any], quiet: str, crossing: str, fill_price: str, proceeds: str
) -> None:
    username, headers = await funded_user(api, "10000")
    api.set_price("BTC", "50000")
    await place(api, headers, order_type="market_buy", quantity="0.1")
    order = await place(api, headers, quantity="0.1", **body)
    assert order["status"] == "queued" and order["held_amount"] == "0.1"  # units: no padding
    s = await snapshot(api, username)
    assert s.holding.available == 0 and s.holding.held == D("0.1")
    assert sorted(t.transaction_type for t in s.asset_txns) == ["buy", "hold"]
    assert s.balance.available == D("5000.00")
    await tick(api, quiet)
    assert (await order_status(api, headers, order["order_id"]))["status"] == "queued"
    await tick(api, crossing)
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "completed" and done["executed_price"] == fill_price
    assert done["total_amount"] == proceeds
    assert done["realized_pnl"] == f"{D(proceeds) - D('5000'):.2f}"
    s = await snapshot(api, username)
    assert s.balance.available == D("5000.00") + D(proceeds)
    assert s.holding.available == 0 and s.holding.held == 0 and s.holding.cost_basis == 0
    assert sorted(t.transaction_type for t in s.asset_txns) == ["buy", "hold", "sell"]
    await audit_ok(api)


async def test_trailing_sell_moves_its_stop_with_the_high(api: Api) -> None:
    _, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    await place(api, headers, order_type="market_buy", quantity="0.1")
    order = await place(api, headers, order_type="trailing_stop_sell", quantity="0.1", trail_amount="1000")
    assert order["stop_price"] == "49000" and order["trail_anchor"] == "50000" and order["trail_amount"] == "1000"
    assert order["trail_percent"] is None
    await tick(api, "52000")
    moved = await order_status(api, headers, order["order_id"])
    assert moved["status"] == "queued" and moved["stop_price"] == "51000" and moved["trail_anchor"] == "52000"
    await tick(api, "51500")
    assert (await order_status(api, headers, order["order_id"]))["stop_price"] == "51000"
    await tick(api, "50900")
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "completed" and done["executed_price"] == "50900" and done["total_amount"] == "5090.00"
    await audit_ok(api)


async def test_stop_limit_becomes_a_limit_when_its_stop_is_crossed(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    order = await place(api, headers, order_type="stop_limit_buy", quantity="0.1", stop_price="55000", price="54000")
    assert order["held_amount"] == "5400.00" and order["price"] == "54000" and order["stop_price"] == "55000"
    await tick(api, "56000")  # stop crossed: now a limit buy at 54000, not yet reachable
    converted = await order_status(api, headers, order["order_id"])
    assert converted["status"] == "queued"
    await tick(api, "54500")
    assert (await order_status(api, headers, order["order_id"]))["status"] == "queued"
    await tick(api, "54000")
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "completed" and done["executed_price"] == "54000" and done["total_amount"] == "5400.00"
    assert done["held_amount"] == "5400.00"  # what was reserved; the ledger released it
    s = await snapshot(api, username)
    assert s.balance.available == D("4600.00") and s.balance.held == 0
    await audit_ok(api)


async def test_stop_limit_sell_fills_at_once_when_the_tick_also_meets_the_limit(api: Api) -> None:
    _, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    await place(api, headers, order_type="market_buy", quantity="0.1")
    order = await place(api, headers, order_type="stop_limit_sell", quantity="0.1", stop_price="45000", price="44000")
    await tick(api, "44500")
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "completed" and done["executed_price"] == "44500" and done["price"] == "44000"
    assert done["total_amount"] == "4450.00" and done["realized_pnl"] == "-550.00"
    await audit_ok(api)


async def test_cancel_releases_the_hold_and_twice_is_409(api: Api) -> None:
    username, headers = await funded_user(api, "10000")
    api.set_price("BTC", "50000")
    order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000")
    r = await api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=headers)
    assert r.status_code == 200, r.text
    cancelled = read(r)["data"]
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    assert cancelled["price"] == "40000" and cancelled["quantity"] == "0.1" and cancelled["held_amount"] == "4000.00"
    assert cancelled["executed_price"] is None and cancelled["total_amount"] is None
    s = await snapshot(api, username)
    assert s.balance.available == D("10000.00") and s.balance.held == 0
    assert ledger_types(s) == ["deposit", "order_hold", "order_release"]
    before = await snapshot(api, username)
    assert_problem(await api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=headers), 409, "order_not_cancellable")
    await tick(api, "39000")  # a cancelled order never fills
    assert await snapshot(api, username) == before
    await audit_ok(api)


async def test_cancel_of_a_sell_returns_the_units(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    await place(api, headers, order_type="market_buy", quantity="0.1")
    order = await place(api, headers, order_type="limit_sell", quantity="0.05", price="60000")
    s = await snapshot(api, username)
    assert s.holding.available == D("0.05") and s.holding.held == D("0.05")
    r = await api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=headers)
    assert r.status_code == 200
    s = await snapshot(api, username)
    assert s.holding.available == D("0.1") and s.holding.held == 0
    await audit_ok(api)


async def test_gtd_order_expires_and_releases_its_hold(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    expires = isoformat(clock.now() + timedelta(seconds=60))
    order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000", time_in_force="gtd",
                        expires_at=expires)
    assert order["expires_at"] == expires
    assert await api.container.triggers.expire_due() == 0
    clock.advance(61)
    assert await api.container.triggers.expire_due() == 1
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "expired"
    s = await snapshot(api, username)
    assert s.balance.available == D("10000.00") and s.balance.held == 0
    assert ledger_types(s) == ["deposit", "order_hold", "order_release"]
    await audit_ok(api)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"order_type": "limit_buy"}, "validation_error"),
        ({"order_type": "limit_sell", "price": "60000", "stop_price": "1"}, "validation_error"),
        ({"order_type": "stop_loss_sell"}, "validation_error"),
        ({"order_type": "trailing_stop_sell", "trail_amount": "10", "trail_percent": "1"}, "validation_error"),
        ({"order_type": "trailing_stop_sell"}, "validation_error"),
        ({"order_type": "trailing_stop_buy", "trail_percent": "100"}, "validation_error"),
        ({"order_type": "limit_buy", "price": "40000", "time_in_force": "gtd"}, "validation_error"),
        ({"order_type": "limit_buy", "price": "40000", "time_in_force": "gtd", "expires_at": "2001-01-01T00:00:00Z"}, "validation_error"),
        ({"order_type": "limit_buy", "price": "40000", "expires_at": "2999-01-01T00:00:00Z"}, "validation_error"),
        ({"order_type": "limit_buy", "price": "40000", "time_in_force": "day"}, "validation_error"),
        ({"order_type": "stop_loss_buy", "stop_price": "55000", "time_in_force": "ioc"}, "validation_error"),
        ({"order_type": "stop_loss_sell", "stop_price": "55000"}, "invalid_order"),
        ({"order_type": "stop_loss_buy", "stop_price": "45000"}, "invalid_order"),
        ({"order_type": "limit_buy", "price": "1000001"}, "validation_error"),
        ({"order_type": "limit_buy", "price": "45000", "quantity": "0.5"}, "order_value_exceeds_limit"),
        ({"order_type": "limit_buy", "price": "45000", "quantity": "0.2"}, "insufficient_funds"),
        ({"order_type": "limit_sell", "price": "60000", "quantity": "0.2"}, "insufficient_holdings"),
    ],
)
async def test_invalid_resting_orders_store_nothing(api: Api, body: dict[str, Any], code: str) -> None:
    username, headers = await funded_user(api, "8000")
    api.set_price("BTC", "50000")
    await place(api, headers, order_type="market_buy", quantity="0.1")
    before = await snapshot(api, username)
    r = await api.order(headers, **{"asset_id": "BTC", "quantity": "0.1", **body})
    assert_problem(r, 422, code)
    assert await snapshot(api, username) == before


async def test_marketable_limit_fills_at_once_at_the_market_price(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="52000")
    assert order["status"] == "completed" and order["executed_price"] == "50000" and order["total_amount"] == "5000.00"
    assert order["price"] == "52000" and order["price_bound"] is None  # a limit order keeps its limit as price
    await audit_ok(api)


async def test_ioc_limit_fills_now_or_is_cancelled_without_moving_money(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    unfilled = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000", time_in_force="ioc")
    assert unfilled["status"] == "cancelled" and "ioc" in unfilled["reason"]
    s = await snapshot(api, username)
    assert s.balance.available == D("10000.00") and ledger_types(s) == ["deposit"]
    filled = await place(api, headers, order_type="limit_buy", quantity="0.1", price="51000", time_in_force="fok")
    assert filled["status"] == "completed" and filled["executed_price"] == "50000" and filled["price"] == "51000"
    await audit_ok(api)


async def test_open_filter_lists_queued_orders(api: Api) -> None:
    _, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    queued = await place(api, headers, order_type="limit_buy", quantity="0.01", price="40000")
    await place(api, headers, order_type="market_buy", quantity="0.01")
    r = await api.client.get("/api/v1/orders", headers=headers, params={"status": "open"})
    assert [o["order_id"] for o in read(r)["data"]] == [queued["order_id"]]
    r = await api.client.get("/api/v1/orders", headers=headers, params={"status": "queued"})
    assert [o["order_id"] for o in read(r)["data"]] == [queued["order_id"]]


async def test_cancel_racing_a_fill_exactly_one_wins(api: Api) -> None:
    for _ in range(5):
        username, headers = await funded_user(api, "5000")
        api.set_price("BTC", "50000")
        order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000")
        api.set_price("BTC", "39000")
        cancel, filled = await asyncio.gather(
            api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=headers),
            api.container.triggers.process([Tick("BTC", D("39000"), api.container.clock.now())]),
        )
        final = await order_status(api, headers, order["order_id"])
        s = await snapshot(api, username)
        if final["status"] == "cancelled":
            assert cancel.status_code == 200
            assert s.balance.available == D("5000.00") and s.holding is None
        else:
            assert final["status"] == "completed"
            assert_problem(cancel, 409, "order_not_cancellable")
            assert s.balance.available == D("1100.00") and s.holding.available == D("0.1")
        assert s.balance.held == 0
    await audit_ok(api)


async def test_two_trigger_engines_fill_every_order_exactly_once(api: Api, store_factory: StoreFactory) -> None:
    api.set_price("BTC", "50000")
    orders = []
    for _ in range(6):
        _, headers = await funded_user(api, "10000")
        for price in ("41000", "42000", "43000", "44000", "45000"):
            orders.append((headers, await place(api, headers, order_type="limit_buy", quantity="0.02", price=price)))
    c = api.container
    other_store = store_factory()
    other = trigger_engine(other_store, c.price_book, c.asset_dao.house, c.settings, c.clock, InProcessEventBus(c.clock))
    # Ticks go to the two engines only (not through the book, so the app's own engine stays out).
    burst = [Tick("BTC", D(p), c.clock.now()) for p in ("44500", "42500", "40000")]
    filled = await asyncio.gather(c.triggers.process(burst), other.process(burst), c.triggers.process(burst[-1:]))
    assert sum(filled) == len(orders)  # no order filled twice, none lost
    for headers, order in orders:
        assert (await order_status(api, headers, order["order_id"]))["status"] == "completed"
    await other_store.close()
    await audit_ok(api)


async def test_insufficient_house_inventory_fails_the_order_and_releases_the_hold(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000")

    await set_house_units(api.container.store, "BTC", D("0.05"), initial=True)
    await tick(api, "39000")
    done = await order_status(api, headers, order["order_id"])
    assert done["status"] == "failed" and done["reason"]
    s = await snapshot(api, username)
    assert s.balance.available == D("10000.00") and s.balance.held == 0
    assert ledger_types(s) == ["deposit", "order_hold", "order_release"]


async def test_the_apps_own_engine_fills_on_a_price_set_by_an_admin(store_factory: StoreFactory) -> None:

    api, lifespan = await open_api(store_factory, trigger_engine=True)
    try:
        username, headers = await funded_user(api)
        admin = await api.admin()
        api.set_price("BTC", "50000")
        order = await place(api, headers, order_type="limit_buy", quantity="0.1", price="40000")
        r = await api.client.post("/api/v1/admin/prices", headers=admin, json={"asset_id": "BTC", "price": "39500"})
        assert r.status_code == 200
        assert read(r) == {"asset_id": "BTC", "price": "39500", "source": "manual"}
        for _ in range(200):  # the background engine consumes the tick on its own
            if (await order_status(api, headers, order["order_id"]))["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        done = await order_status(api, headers, order["order_id"])
        assert done["status"] == "completed" and done["executed_price"] == "39500" and done["total_amount"] == "3950.00"
        s = await snapshot(api, username)
        assert s.balance.available == D("6050.00") and s.balance.held == 0
        await audit_ok(api)
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
