"""A trader's whole journey in Chromium against a real `cnop serve`, checked against the JSON API."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.web import ADMIN, PASSWORD, Server, screenshot, wait_until
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system


def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.fill("#f-username", username)
    page.fill("#f-password", password)
    page.locator("main button[type=submit]").click()
    page.wait_for_url(lambda url: "/login" not in url)


def api_token(server: Server, username: str, password: str = PASSWORD) -> dict[str, str]:
    with server.api() as http:
        r = http.post("/api/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {read(r)['access_token']}"}


def api_get(server: Server, path: str, headers: dict[str, str], **params: Any) -> Any:
    with server.api() as http:
        r = http.get(path, headers=headers, params=params)
        assert r.status_code == 200, r.text
        return read(r)


def admin_sets_price(admin: Any, asset_id: str, price: str) -> None:
    admin.goto("/admin")
    admin.fill("#f-asset_id", asset_id)
    admin.fill("#f-price", price)
    admin.locator("form[action='/admin/prices'] button").click()
    admin.wait_for_url("**/admin?notice=price")


def usd_text(value: str) -> str:
    """`1234.5` -> `$1,234.50`, as the pages write USD."""
    amount = Decimal(value).quantize(Decimal("0.01"))
    sign = "−" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def signed(value: str) -> str:
    amount = Decimal(value).quantize(Decimal("0.01"))
    return ("+" if amount > 0 else "") + usd_text(value)


def test_sign_up_trade_watch_orders_fill_live_export_and_change_password(
    context: Any, browser: Any, server: Server, tmp_path: Path
) -> None:
    admin_ctx = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 800})
    admin = admin_ctx.new_page()
    log_in(admin, ADMIN)
    admin_sets_price(admin, "BTC", "50000")

    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # Sign up: straight into the dashboard.
    page.goto("/signup")
    page.fill("#f-username", "journey_trader")
    page.fill("#f-email", "journey@example.com")
    page.fill("#f-password", PASSWORD)
    page.fill("#f-first_name", "Jo")
    page.fill("#f-last_name", "Trader")
    page.locator("main button[type=submit]").click()
    page.wait_for_url("**/dashboard?notice=welcome")
    assert page.locator("[data-total-value]").inner_text() == "$0.00"

    # Deposit.
    page.goto("/cash")
    page.fill("#f-deposit-amount", "5000")
    page.locator("form[action='/cash/deposit'] button").click()
    page.wait_for_url("**/cash?notice=deposited")
    assert page.locator("[data-cash-available]").inner_text() == "$5,000.00"

    # Market buy from the asset page; the ticket previews the cost first.
    page.goto("/assets/BTC")
    wait_until(lambda: int(page.locator("#chart").get_attribute("data-points") or 0) > 0)
    page.fill("#f-quantity", "0.02")
    page.locator("[data-preview-value]").wait_for()
    assert page.locator("[data-preview-value]").inner_text() == "$1,000.00"
    page.locator("#place-order").click()
    page.wait_for_url("**/orders?notice=placed**")

    # The price moves; the dashboard shows the holding and P&L the API reports.
    admin_sets_price(admin, "BTC", "51234.56")
    user_api = api_token(server, "journey_trader")
    portfolio = api_get(server, "/api/v1/portfolio", user_api)
    (btc,) = portfolio["assets"]
    assert exact(btc["quantity"]) == Decimal("0.02")
    assert usd(btc["unrealized_pnl"]) == Decimal("24.69")
    page.goto("/dashboard")
    row = page.locator('[data-holding="BTC"]')
    assert row.locator("[data-quantity]").inner_text().startswith("0.02000000")
    assert row.locator("[data-market-value]").inner_text() == usd_text(str(btc["market_value"]))
    assert row.locator("[data-cost-basis]").inner_text() == usd_text(str(btc["cost_basis"]))
    assert row.locator("[data-pnl]").inner_text() == signed(str(btc["unrealized_pnl"]))
    assert page.locator("[data-total-value]").inner_text() == usd_text(str(portfolio["total_value"]))
    assert page.locator("[data-total-pnl]").inner_text() == "+$24.69"
    screenshot(page, "journey-dashboard")

    # A limit buy and a stop-loss sell: both rest, the buy holds cash.
    page.goto("/assets/BTC")
    page.select_option("#f-kind", "limit")
    page.fill("#f-quantity", "0.01")
    page.fill("#f-price", "49000")
    page.locator("[data-preview-reserve]").wait_for()
    assert page.locator("[data-preview-reserve]").inner_text() == "$490.00 cash"
    page.locator("#place-order").click()
    page.wait_for_url("**/orders?notice=placed**")
    page.goto("/assets/BTC")
    page.check("#side-sell", force=True)
    page.select_option("#f-kind", "stop_loss")
    page.fill("#f-quantity", "0.01")
    page.fill("#f-stop_price", "45000")
    page.locator("#place-order").click()
    page.wait_for_url("**/orders?notice=placed**")
    open_rows = page.locator("#open-orders tbody tr")
    assert open_rows.count() == 2
    balance = api_get(server, "/api/v1/balance", user_api)
    assert usd(balance["held_balance"]) == Decimal("490.00")
    page.goto("/dashboard")
    assert page.locator("[data-cash-held]").inner_text() == "$490.00"
    orders = api_get(server, "/api/v1/orders", user_api, status="open")["data"]
    limit_id = next(o["order_id"] for o in orders if o["order_type"] == "limit_buy")
    stop_id = next(o["order_id"] for o in orders if o["order_type"] == "stop_loss_sell")

    # The admin moves the price through the limit: the open page shows it completed, no reload.
    page.goto("/orders")
    page.evaluate("window.__sameDocument = true")
    assert page.locator(f'#open-orders [data-order="{limit_id}"]').count() == 1
    page.wait_for_timeout(500)  # the page's event stream is connected
    admin_sets_price(admin, "BTC", "48900")
    page.locator(f'#order-history [data-order="{limit_id}"] [data-status]').filter(has_text="Completed").wait_for()
    assert page.evaluate("window.__sameDocument === true")
    assert page.locator(f'#open-orders [data-order="{stop_id}"]').count() == 1
    assert page.locator("#live-region").inner_text().lower().startswith("order btc limit buy")
    filled = api_get(server, f"/api/v1/orders/{limit_id}", user_api)["data"]
    assert filled["status"] == "completed" and exact(filled["executed_price"]) == Decimal("48900")

    # Cancel the other.
    page.locator(f'#open-orders [data-order="{stop_id}"] button').click()
    page.wait_for_url("**/orders?notice=cancelled")
    assert page.locator("#open-orders").count() == 0
    assert api_get(server, f"/api/v1/orders/{stop_id}", user_api)["data"]["status"] == "cancelled"

    # Export the ledger; its rows are the API's ledger.
    page.goto("/ledger")
    with page.expect_download() as download_info:
        page.click("#csv-export")
    saved = tmp_path / "ledger.csv"
    download_info.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    entries = api_get(server, "/api/v1/balance/transactions", user_api, limit=100)["transactions"]
    assert len(rows) == len(entries) >= 5
    assert [r["transaction_id"] for r in rows] == [e["transaction_id"] for e in entries]
    assert [r["transaction_type"] for r in rows] == [e["transaction_type"] for e in entries]
    assert [Decimal(r["amount"]) for r in rows] == [usd(e["amount"]) for e in entries]

    # A second session (another browser) is logged out by the password change; this one stays.
    other_ctx = browser.new_context(base_url=server.base)
    other = other_ctx.new_page()
    log_in(other, "journey_trader")
    other.goto("/dashboard")
    assert "/dashboard" in other.url
    page.goto("/profile")
    new_password = "N3w!Passw0rd-journey"
    page.fill("#f-current_password", PASSWORD)
    page.fill("#f-new_password", new_password)
    page.fill("#f-confirm_password", new_password)
    page.locator("form[action='/profile/password'] button").click()
    page.wait_for_url("**/profile?notice=password")
    other.goto("/dashboard")
    assert "/login" in other.url
    page.goto("/dashboard")
    assert "/dashboard" in page.url
    with server.api() as http:
        assert http.get("/api/v1/auth/profile", headers=user_api).status_code == 401
    other_ctx.close()
    admin_ctx.close()
    assert errors == []
