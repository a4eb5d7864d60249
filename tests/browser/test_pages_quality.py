"""Every page in Chromium: no serious or critical axe-core violation, screenshots at two sizes,
no console errors (the CSP would report a blocked inline script), cookie flags, CSRF refusals,
and the live streams (public prices, the user's events on the session cookie) on the real server.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.web import ADMIN, PASSWORD, VIEWPORTS, Server, screenshot, serious_violations
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system


def register_via_api(server: Server, username: str) -> dict[str, str]:
    with server.api() as http:
        r = http.post(
            "/api/v1/auth/register",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": PASSWORD,
                "first_name": "Quinn",
                "last_name": "Quality",
            },
        )
        assert r.status_code == 201, r.text
        r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
        return {"Authorization": f"Bearer {read(r)['access_token']}"}


def admin_api(server: Server) -> dict[str, str]:
    with server.api() as http:
        r = http.post("/api/v1/auth/login", json={"username": ADMIN, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {read(r)['access_token']}"}


def set_price(server: Server, admin: dict[str, str], asset_id: str, price: str) -> None:
    with server.api() as http:
        r = http.post("/api/v1/admin/prices", json={"asset_id": asset_id, "price": price}, headers=admin)
        assert r.status_code == 200, r.text


def log_in(page: Any, username: str) -> None:
    page.goto("/login")
    page.fill("#f-username", username)
    page.fill("#f-password", PASSWORD)
    page.locator("main button[type=submit]").click()
    page.wait_for_url("**/dashboard")


def check_page(page: Any, name: str) -> None:
    """axe at both sizes (no serious/critical violation), then the screenshots."""
    for label, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        violations = serious_violations(page)
        assert violations == [], f"{name} at {label}: {json.dumps(violations, indent=1)}"
    page.set_viewport_size({"width": 1280, "height": 800})
    screenshot(page, name)


def test_every_page_is_accessible_and_screenshotted(browser: Any, server: Server) -> None:
    admin = admin_api(server)
    set_price(server, admin, "BTC", "50000")
    set_price(server, admin, "ETH", "3000")
    user = register_via_api(server, "quality_user")
    with server.api() as http:
        assert http.post("/api/v1/balance/deposit", json={"amount": "8000"}, headers=user).status_code == 201
        for body in (
            {"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.03"},
            {"order_type": "market_buy", "asset_id": "ETH", "quantity": "0.5"},
            {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": "45000"},
            {"order_type": "take_profit_sell", "asset_id": "ETH", "quantity": "0.2", "stop_price": "3600"},
        ):
            r = http.post("/api/v1/orders", json=body, headers=user)
            assert r.status_code == 201, r.text
    set_price(server, admin, "BTC", "51000")
    set_price(server, admin, "ETH", "2950.5")

    context = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror {exc}"))
    page.on("console", lambda msg: problems.append(f"{page.url}: {msg.text}") if msg.type == "error" else None)

    for name, path in (("markets", "/"), ("login", "/login"), ("signup", "/signup"), ("asset-public", "/assets/ETH")):
        page.goto(path)
        check_page(page, name)
    page.goto("/assets/NOPE")
    assert page.locator("h1").inner_text() == "No such asset"
    check_page(page, "not-found")

    page.goto("/signup")
    page.fill("#f-username", "x")
    page.fill("#f-email", "bad")
    page.locator("main button[type=submit]").click()
    page.locator('[data-error-for="username"]').wait_for()
    check_page(page, "signup-errors")

    log_in(page, "quality_user")
    check_page(page, "dashboard")
    page.goto("/assets/BTC")
    page.locator("#chart[data-points]").wait_for()
    page.select_option("#f-kind", "stop_limit")
    page.fill("#f-quantity", "0.01")
    page.fill("#f-price", "52500")
    page.fill("#f-stop_price", "52000")
    page.locator("[data-preview-reserve]").wait_for()
    check_page(page, "asset-ticket")
    for name, path in (("orders", "/orders"), ("ledger", "/ledger"), ("cash", "/cash"), ("profile", "/profile")):
        page.goto(path)
        check_page(page, name)
    page.goto("/cash")
    page.fill("#f-withdraw-amount", "999999")
    page.locator("form[action='/cash/withdraw'] button").click()
    page.locator('[data-error-for="withdraw-amount"]').wait_for()
    check_page(page, "cash-errors")
    context.close()

    admin_context = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 800})
    admin_page = admin_context.new_page()
    admin_page.on(
        "console", lambda msg: problems.append(f"{admin_page.url}: {msg.text}") if msg.type == "error" else None
    )
    log_in(admin_page, ADMIN)
    admin_page.goto("/admin")
    check_page(admin_page, "admin")
    admin_page.goto("/admin/ledger?username=quality_user")
    assert admin_page.locator("#admin-ledger tbody tr").count() >= 3
    check_page(admin_page, "admin-ledger")
    admin_context.close()
    # The 4xx answers of the unknown asset and the bad forms are expected; anything else (a CSP
    # refusal, a script error, a missing asset) is not.
    expected = "Failed to load resource: the server responded with a status of 4"
    assert [p for p in problems if expected not in p or "/static/" in p] == []


def test_keyboard_alone_logs_in_and_reaches_the_order_ticket(browser: Any, server: Server) -> None:
    register_via_api(server, "keyboard_user")
    context = browser.new_context(base_url=server.base)
    page = context.new_page()
    page.goto("/login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.focus("#f-username")
    page.keyboard.type("keyboard_user")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/dashboard")
    page.goto("/assets/BTC")
    page.focus("#side-buy")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.querySelector('#side-sell').checked")
    context.close()


def test_session_cookie_flags_and_csrf_refusal_in_the_browser(browser: Any, server: Server) -> None:
    user = register_via_api(server, "cookie_user")
    context = browser.new_context(base_url=server.base)
    page = context.new_page()
    log_in(page, "cookie_user")
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["cnop_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
    assert not session["secure"]  # plain http on 127.0.0.1
    assert 0 < session["expires"] - time.time() <= 3600 + 5
    assert cookies["cnop_csrf"]["httpOnly"] and cookies["cnop_csrf"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts see no cookie
    assert page.evaluate("Object.keys(localStorage).length") == 0
    # A POST with the session cookie but without the form's token: refused, nothing changes.
    refused = page.request.post("/cash/deposit", form={"amount": "500"})
    assert refused.status == 403
    wrong = page.request.post("/cash/deposit", form={"amount": "500", "csrf_token": "forged-token-forged-token"})
    assert wrong.status == 403
    with server.api() as http:
        balance = read(http.get("/api/v1/balance", headers=user))
        assert usd(balance["available_balance"]) == Decimal("0")
        assert read(http.get("/api/v1/balance/transactions", headers=user))["transactions"] == []
    context.close()


def read_events(lines: Any, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The next `count` events from an SSE line iterator (comments and retry lines skipped)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for line in lines:
        if time.monotonic() > deadline:
            break
        if line.startswith(":") or line.startswith("retry:"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
                if len(events) == count:
                    return events
            continue
        name, _, value = line.partition(": ")
        current[name] = json.loads(value) if name == "data" else value
    return events


def test_public_price_stream_and_cookie_authenticated_events_with_resume(server: Server) -> None:
    admin = admin_api(server)
    set_price(server, admin, "BTC", "50500.5")
    with httpx.Client(base_url=server.base, timeout=20) as http:
        with http.stream("GET", "/api/v1/prices/stream", params={"assets": "btc,ETH"}) as prices:
            assert prices.status_code == 200
            assert prices.headers["content-type"].startswith("text/event-stream")
            price_lines = prices.iter_lines()
            first = read_events(price_lines, 2)
            assert {e["data"]["asset_id"] for e in first} == {"BTC", "ETH"}
            assert all(e["event"] == "price.tick" for e in first)
            btc = next(e for e in first if e["data"]["asset_id"] == "BTC")
            assert exact(btc["data"]["price"]) == Decimal("50500.5")
            set_price(server, admin, "DOGE", "0.2")  # not asked for: not sent
            set_price(server, admin, "BTC", "50600.25")
            (tick,) = read_events(price_lines, 1)
            assert tick["data"]["asset_id"] == "BTC" and exact(tick["data"]["price"]) == Decimal("50600.25")
        assert http.get("/api/v1/prices/stream", params={"assets": "BTC,NOPE"}).status_code == 422

        # The user's event stream on the web session cookie alone (what EventSource sends).
        user = register_via_api(server, "stream_user")
        assert http.post("/api/v1/balance/deposit", json={"amount": "2000"}, headers=user).status_code == 201
        login_page = http.get("/login")
        csrf = login_page.cookies["cnop_csrf"]
        r = http.post(
            "/login",
            data={"csrf_token": csrf, "username": "stream_user", "password": PASSWORD},
            cookies={"cnop_csrf": csrf},
            follow_redirects=False,
        )
        assert r.status_code == 303
        session = r.cookies["cnop_session"]
        http.cookies.clear()
        assert http.get("/api/v1/events").status_code == 401  # no cookie, no header
        with http.stream("GET", "/api/v1/events", cookies={"cnop_session": session}) as events:
            assert events.status_code == 200
            placed = http.post(
                "/api/v1/orders",
                json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": "40000"},
                headers=user,
            )
            assert placed.status_code == 201
            (queued,) = read_events(events.iter_lines(), 1)
            assert queued["event"] == "order.queued"
            order_id = read(placed)["data"]["order_id"]
            assert queued["data"]["order_id"] == order_id
            first_id = queued["id"]
        assert http.delete(f"/api/v1/orders/{order_id}", headers=user).status_code == 200
        # Reconnecting with Last-Event-ID replays what was missed.
        with http.stream(
            "GET", "/api/v1/events", cookies={"cnop_session": session}, headers={"Last-Event-ID": first_id}
        ) as resumed:
            (missed,) = read_events(resumed.iter_lines(), 1)
            assert missed["event"] == "order.cancelled" and missed["data"]["order_id"] == order_id
