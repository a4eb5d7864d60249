"""Web pages in process, on each store engine: sessions, CSRF, the login guard, forms, the CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from cnop.services.web.rendering import PAGE_CSP
from cnop.services.web.session import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import StoreFactory
from tests.support.web_app import PASSWORD, Web, csrf_of, log_in, open_web, post_form
from tests.support.wire import read


@pytest.fixture
async def web(store_factory: StoreFactory) -> AsyncIterator[Web]:
    built = await open_web(store_factory())
    yield built
    await built.close()


def cookie_header(response: object, name: str) -> str:
    headers = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]  # type: ignore[attr-defined]
    found = [h for h in headers if h.startswith(f"{name}=")]
    assert found, f"no {name} cookie set: {headers}"
    return found[-1]


async def api_headers(web: Web, username: str) -> dict[str, str]:
    client = web.browser()
    r = await client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {read(r)['access_token']}"}


async def test_markets_page_lists_every_active_asset_with_its_exact_price(web: Web) -> None:
    web.set_price("BTC", "50123.456")
    web.set_price("DOGE", "0.123456789")
    client = web.browser()
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert 'data-price="BTC">$50,123.46<' in r.text
    assert 'data-price="DOGE">$0.12345679<' in r.text
    assert r.text.count('<tr data-asset="') == len([a for a in await web.container.asset_dao.all_assets() if a.is_active])
    searched = await client.get("/", params={"q": "doge"})
    assert searched.text.count('<tr data-asset="') == 1 and 'data-asset="DOGE"' in searched.text
    stable = await client.get("/", params={"category": "stablecoin"})
    assert 'data-asset="USDT"' in stable.text and 'data-asset="BTC"' not in stable.text


async def test_signup_signs_in_with_an_httponly_strict_cookie_and_no_token_in_the_page(web: Web) -> None:
    client = web.browser()
    form = {
        "username": "web_user_01",
        "email": "web1@example.com",
        "password": PASSWORD,
        "first_name": "Wendy",
        "last_name": "Web",
    }
    r = await post_form(client, "/signup", form, page="/signup")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard?notice=welcome"
    cookie = cookie_header(r, SESSION_COOKIE)
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert "httponly" in parts and "samesite=strict" in parts and "path=/" in parts
    assert "secure" not in parts  # plain http here
    assert any(p.startswith("max-age=") and 0 < int(p.split("=")[1]) <= 7 * 86400 for p in parts)
    page = await client.get("/dashboard")
    assert page.status_code == 200 and "web_user_01" in page.text
    token = client.cookies.get(SESSION_COOKIE)
    assert token and token not in page.text
    assert "localStorage" not in (await client.get("/static/app.js")).text
    user = await web.container.user_dao.get_user_by_username("web_user_01")
    assert user.email == "web1@example.com"


async def test_cookies_are_secure_when_a_trusted_proxy_says_https(store_factory: StoreFactory) -> None:
    web = await open_web(store_factory(), trusted_proxies=["10.0.0.1"])
    try:
        await web.make_user("proxied_01")
        for peer, believed in (("10.0.0.1", True), ("192.0.2.7", False)):
            client = web.browser(client_ip=peer)
            client.headers["X-Forwarded-Proto"] = "https"
            page = await client.get("/login")
            csrf_cookie = cookie_header(page, CSRF_COOKIE)
            assert ("secure" in [p.strip().lower() for p in csrf_cookie.split(";")]) is believed
            token = csrf_cookie.split(";")[0].split("=", 1)[1]
            client.cookies.clear()
            r = await client.post(
                "/login",
                data={"csrf_token": token, "username": "proxied_01", "password": PASSWORD},
                headers={"Cookie": f"{CSRF_COOKIE}={token}"},
            )
            assert r.status_code == 303, r.text
            session = [p.strip().lower() for p in cookie_header(r, SESSION_COOKIE).split(";")]
            assert ("secure" in session) is believed
            assert "httponly" in session and "samesite=strict" in session
    finally:
        await web.close()


async def test_account_pages_need_the_session(web: Web) -> None:
    client = web.browser()
    for path in ("/dashboard", "/orders", "/ledger", "/ledger.csv", "/cash", "/profile", "/admin", "/admin/ledger"):
        r = await client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next="), path
    client.cookies.set(SESSION_COOKIE, "not-a-token")
    assert (await client.get("/dashboard")).status_code == 303


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(web: Web) -> None:
    await web.make_user("csrf_user_01")
    client = web.browser()
    assert (await log_in(client, "csrf_user_01")).status_code == 303
    token = await csrf_of(client, "/cash")
    missing = await client.post("/cash/deposit", data={"amount": "100"})
    wrong = await client.post("/cash/deposit", data={"amount": "100", "csrf_token": "x" * 43})
    header_only = await client.post("/cash/deposit", data={"amount": "100"}, headers={"X-CSRF-Token": "y" * 43})
    for refused in (missing, wrong, header_only):
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    balance = await web.container.balance_dao.get_balance("csrf_user_01")
    assert balance.available == Decimal("0") and balance.total_deposited == Decimal("0")
    ledger = await web.container.balance_dao.get_user_transactions("csrf_user_01", limit=10)
    assert ledger.items == []
    # The cookie alone, without the matching field (what a cross-site form would send), fails too;
    # with the token the same request goes through.
    ok = await client.post("/cash/deposit", data={"amount": "100", "csrf_token": token})
    assert ok.status_code == 303
    assert (await web.container.balance_dao.get_balance("csrf_user_01")).available == Decimal("100.00")
    # Login itself is a state-changing form.
    fresh = web.browser()
    await fresh.get("/login")
    assert fresh.cookies.get(CSRF_COOKIE)
    r = await fresh.post("/login", data={"username": "csrf_user_01", "password": PASSWORD})
    assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")


async def test_logout_revokes_the_session_like_an_api_token(web: Web) -> None:
    await web.make_user("logout_user_01")
    client = web.browser()
    await log_in(client, "logout_user_01")
    token = client.cookies.get(SESSION_COOKIE)
    assert token
    api = web.browser()
    assert (await api.get("/api/v1/auth/profile", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    r = await post_form(client, "/logout", {}, page="/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/login?notice=logged_out"
    assert (await api.get("/api/v1/auth/profile", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    replay = web.browser()
    replay.cookies.set(SESSION_COOKIE, token)
    assert (await replay.get("/dashboard")).status_code == 303


async def test_password_change_signs_out_every_other_session_and_keeps_this_one(web: Web) -> None:
    await web.make_user("pw_user_0001")
    first, second = web.browser(), web.browser()
    await log_in(first, "pw_user_0001")
    await log_in(second, "pw_user_0001")
    old_api = await api_headers(web, "pw_user_0001")
    new_password = "N3w!Passw0rd-2026"
    r = await post_form(
        first,
        "/profile/password",
        {"current_password": PASSWORD, "new_password": new_password, "confirm_password": new_password},
        page="/profile",
    )
    assert r.status_code == 303 and r.headers["location"] == "/profile?notice=password"
    assert (await first.get("/dashboard")).status_code == 200
    assert (await second.get("/dashboard")).status_code == 303
    assert (await web.browser().get("/api/v1/auth/profile", headers=old_api)).status_code == 401
    assert (await log_in(web.browser(), "pw_user_0001", new_password)).status_code == 303
    assert (await log_in(web.browser(), "pw_user_0001", PASSWORD)).status_code == 401


async def test_six_wrong_web_logins_trip_the_same_login_guard_as_the_api(web: Web) -> None:
    await web.make_user("guarded_0001")
    client = web.browser(client_ip="198.51.100.9")
    for _ in range(5):
        r = await log_in(client, "guarded_0001", "Wr0ng!Passw0rd")
        assert r.status_code == 401
        assert "Wrong username or password" in r.text
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    sixth = await log_in(client, "guarded_0001", PASSWORD)  # even the right password is blocked now
    assert sixth.status_code == 403
    assert "Too many failed log-ins" in sixth.text and int(sixth.headers["retry-after"]) > 0
    assert SESSION_COOKIE not in sixth.headers.get("set-cookie", "")
    api = web.browser(client_ip="198.51.100.9")
    r = await api.post("/api/v1/auth/login", json={"username": "guarded_0001", "password": PASSWORD})
    assert r.status_code == 403 and read(r)["code"] == "login_blocked"
    # Another address is not blocked; the account itself only waits out its first delay (1 s,
    # growing with more failures, never a lock), then logs in.
    other = web.browser(client_ip="198.51.100.10")
    first = await log_in(other, "guarded_0001")
    assert first.status_code in (303, 429)
    if first.status_code == 429:
        assert SESSION_COOKIE not in first.headers.get("set-cookie", "")
        deadline = time.monotonic() + 10
        while (again := await log_in(other, "guarded_0001")).status_code == 429 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert again.status_code == 303


async def test_each_form_shows_the_fields_message_and_changes_nothing(web: Web) -> None:
    await web.make_user("form_user_01")
    client = web.browser()
    await log_in(client, "form_user_01")
    web.set_price("BTC", "50000")

    signup = web.browser()
    r = await post_form(
        signup,
        "/signup",
        {"username": "ab", "email": "nope", "password": "short", "first_name": "R2D2", "last_name": "X"},
        page="/signup",
    )
    assert r.status_code == 422
    for name in ("username", "email", "password", "first_name"):
        assert f'data-error-for="{name}"' in r.text, name
    assert await web.container.user_dao.find_user("ab") is None

    for amount, words in (("0", "greater than 0"), ("1.001", "decimal places"), ("abc", "number"), ("", "required")):
        r = await post_form(client, "/cash/deposit", {"amount": amount}, page="/cash")
        assert r.status_code == 422, amount
        assert 'data-error-for="deposit-amount"' in r.text and words in r.text, (amount, r.text[-3000:])
    r = await post_form(client, "/cash/withdraw", {"amount": "10"}, page="/cash")
    assert r.status_code == 422 and 'data-error-for="withdraw-amount"' in r.text and "Not enough cash" in r.text
    balance = await web.container.balance_dao.get_balance("form_user_01")
    assert balance.available == Decimal("0") and balance.held == Decimal("0")

    await post_form(client, "/cash/deposit", {"amount": "1000"}, page="/cash")
    r = await post_form(client, "/assets/BTC/orders", {"side": "buy", "kind": "market", "quantity": "0.123456789"}, page="/assets/BTC")
    assert r.status_code == 422 and 'data-error-for="quantity"' in r.text
    r = await post_form(client, "/assets/BTC/orders", {"side": "buy", "kind": "limit", "quantity": "0.01"}, page="/assets/BTC")
    assert r.status_code == 422 and 'data-error-for="price"' in r.text
    r = await post_form(client, "/assets/BTC/orders", {"side": "buy", "kind": "market", "quantity": "0.1"}, page="/assets/BTC")
    assert r.status_code == 422 and 'data-refusal="insufficient_funds"' in r.text and "Not enough cash available" in r.text
    r = await post_form(client, "/assets/BTC/orders", {"side": "sell", "kind": "market", "quantity": "0.01"}, page="/assets/BTC")
    assert r.status_code == 422 and 'data-refusal="insufficient_holdings"' in r.text
    r = await post_form(
        client, "/assets/BTC/orders", {"side": "buy", "kind": "market", "quantity": "0.01", "price": "40000"}, page="/assets/BTC"
    )
    assert r.status_code == 422 and 'data-refusal="price_protection"' in r.text
    r = await post_form(client, "/assets/BTC/orders", {"side": "buy", "kind": "market", "quantity": "1"}, page="/assets/BTC")
    assert r.status_code == 422 and 'data-refusal="order_value_exceeds_limit"' in r.text
    orders = await web.container.order_dao.get_orders_by_user("form_user_01", limit=10)
    assert orders.items == []
    assert (await web.container.balance_dao.get_balance("form_user_01")).available == Decimal("1000.00")

    r = await post_form(client, "/profile", {"first_name": "", "last_name": "Web", "email": "x@", "phone": "12"}, page="/profile")
    assert r.status_code == 422
    for name in ("first_name", "email", "phone"):
        assert f'data-error-for="{name}"' in r.text, name
    user = await web.container.user_dao.get_user_by_username("form_user_01")
    assert user.first_name == "Ada" and user.email == "form_user_01@example.com" and user.phone is None

    r = await post_form(
        client,
        "/profile/password",
        {"current_password": PASSWORD, "new_password": "weakweakweakweak", "confirm_password": "weakweakweakweak"},
        page="/profile",
    )
    assert r.status_code == 422 and 'data-error-for="new_password"' in r.text
    r = await post_form(
        client,
        "/profile/password",
        {"current_password": "Wr0ng!Passw0rd", "new_password": "N3w!Passw0rd-99", "confirm_password": "N3w!Passw0rd-99"},
        page="/profile",
    )
    assert r.status_code == 401 and 'data-error-for="current_password"' in r.text
    assert (await client.get("/dashboard")).status_code == 200  # still signed in: nothing changed
    assert (await log_in(web.browser(), "form_user_01", PASSWORD)).status_code == 303


async def test_admin_pages_set_prices_toggle_assets_and_read_any_ledger(web: Web) -> None:
    await web.make_user("admin_web_01", admin=True)
    await web.make_user("plain_web_01")
    await web.container.money.deposit("plain_web_01", Decimal("250.00"))
    plain = web.browser()
    await log_in(plain, "plain_web_01")
    assert (await plain.get("/admin")).headers["location"] == "/dashboard"
    r = await post_form(plain, "/admin/prices", {"asset_id": "BTC", "price": "1"}, page="/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    assert web.container.price_book.current("BTC").price != Decimal("1")  # type: ignore[union-attr]

    admin = web.browser()
    await log_in(admin, "admin_web_01")
    r = await post_form(admin, "/admin/prices", {"asset_id": "BTC", "price": "-5"}, page="/admin")
    assert r.status_code == 422 and 'data-error-for="price"' in r.text
    r = await post_form(admin, "/admin/prices", {"asset_id": "NOPE", "price": "5"}, page="/admin")
    assert r.status_code == 404 and 'data-error-for="asset_id"' in r.text
    r = await post_form(admin, "/admin/prices", {"asset_id": "btc", "price": "61234.5"}, page="/admin")
    assert r.status_code == 303
    assert web.container.price_book.current("BTC").price == Decimal("61234.5")  # type: ignore[union-attr]
    r = await post_form(admin, "/admin/assets/DOGE/deactivate", {}, page="/admin")
    assert r.status_code == 303
    assert not (await web.container.asset_dao.get_asset("DOGE")).is_active
    r = await post_form(admin, "/admin/assets/DOGE/activate", {}, page="/admin")
    assert (await web.container.asset_dao.get_asset("DOGE")).is_active
    ledger = await admin.get("/admin/ledger", params={"username": "plain_web_01"})
    assert ledger.status_code == 200 and "$250.00" in ledger.text and "Deposit" in ledger.text
    missing = await admin.get("/admin/ledger", params={"username": "nobody_here"})
    assert missing.status_code == 404 and "No user of that name" in missing.text


async def test_ledger_csv_has_the_api_ledger_rows(web: Web) -> None:
    await web.make_user("csv_user_001")
    web.set_price("BTC", "40000")
    for amount in ("1000", "250.5", "0.01"):
        await web.container.money.deposit("csv_user_001", Decimal(amount))
    await web.container.money.withdraw("csv_user_001", Decimal("100"))
    client = web.browser()
    await log_in(client, "csv_user_001")
    r = await post_form(client, "/assets/BTC/orders", {"side": "buy", "kind": "market", "quantity": "0.001"}, page="/assets/BTC")
    assert r.status_code == 303
    exported = await client.get("/ledger.csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    api = await api_headers(web, "csv_user_001")
    body = read(await web.browser().get("/api/v1/balance/transactions", params={"limit": 100}, headers=api))
    assert len(rows) == len(body["transactions"]) == 5
    for row, entry in zip(rows, body["transactions"], strict=True):
        assert row["transaction_id"] == entry["transaction_id"]
        assert row["transaction_type"] == entry["transaction_type"]
        assert Decimal(row["amount"]) == Decimal(str(entry["amount"]))
        assert row["status"] == entry["status"]
    only = list(csv.DictReader(io.StringIO((await client.get("/ledger.csv", params={"transaction_type": "deposit"})).text)))
    assert [r["transaction_type"] for r in only] == ["deposit"] * 3


async def test_order_preview_shows_cost_and_reservation(web: Web) -> None:
    await web.make_user("preview_0001")
    await web.container.money.deposit("preview_0001", Decimal("1000"))
    web.set_price("BTC", "50000")
    client = web.browser()
    await log_in(client, "preview_0001")
    token = await csrf_of(client, "/assets/BTC")
    hx = {"HX-Request": "true", "X-CSRF-Token": token}
    market = await client.post("/assets/BTC/preview", data={"side": "buy", "kind": "market", "quantity": "0.01"}, headers=hx)
    assert market.status_code == 200 and "$500.00" in market.text and "At once" in market.text
    limit = await client.post(
        "/assets/BTC/preview", data={"side": "buy", "kind": "limit", "quantity": "0.01", "price": "45000"}, headers=hx
    )
    assert 'data-preview-reserve>$450.00 cash' in limit.text
    stop = await client.post(
        "/assets/BTC/preview", data={"side": "buy", "kind": "stop_loss", "quantity": "0.01", "stop_price": "52000"}, headers=hx
    )
    assert 'data-preview-reserve>$546.00 cash' in stop.text  # stop x quantity plus the 5 % margin
    too_much = await client.post("/assets/BTC/preview", data={"side": "buy", "kind": "market", "quantity": "0.1"}, headers=hx)
    assert 'data-refusal="insufficient_funds"' in too_much.text
    assert (await web.container.balance_dao.get_balance("preview_0001")).held == Decimal("0")
