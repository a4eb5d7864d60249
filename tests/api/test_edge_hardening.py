"""Edge review findings 6, 8 and 10 (per-account throttling), through the gateway's ASGI app.

6: patterns match the whole input. 8: a wrong current password counts as a failed login; only the
exact issued token string is accepted; unreadable bodies are 422 problems. 10: failed logins
for one account from many addresses get growing delays (never a lock).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from tests.conftest import StoreFactory
from tests.support.api import PASSWORD, Api, assert_problem, ledger, open_api, reg_body
from tests.support.wire import read

D = Decimal
WRONG = "Wr0ng!Password"


# --- 6: full-string matching -------------------------------------------------------------------


@pytest.mark.parametrize("username", ["alice_01\n", "alice_01\r\n", "\nalice_01", "alice_01\x00"])
async def test_a_username_with_a_line_break_or_nul_is_refused_and_nothing_is_stored(api: Api, username: str) -> None:
    r = await api.client.post("/api/v1/auth/register", json=reg_body(username=username))
    body = assert_problem(r, 422, "validation_error")
    assert body["errors"][0]["field"] == "username"
    for candidate in (username, username.strip(), username.lower()):
        assert await api.container.user_dao.find_user(candidate) is None
    assert await api.container.user_dao.email_owner("alice@example.com") is None


async def test_the_lookalike_username_cannot_shadow_the_real_account(api: Api) -> None:
    assert (await api.client.post("/api/v1/auth/register", json=reg_body())).status_code == 201
    r = await api.client.post(
        "/api/v1/auth/register", json=reg_body(username="alice_01\n", email="mallory@example.com")
    )
    assert_problem(r, 422, "validation_error")
    assert await api.container.user_dao.email_owner("mallory@example.com") is None


async def test_path_and_query_patterns_match_the_whole_value(api: Api) -> None:
    _, headers = await api.register()
    admin = await api.admin()
    r = await api.client.get("/api/v1/inventory/assets/BTC%0A")
    assert_problem(r, 422, "validation_error")
    r = await api.client.get("/api/v1/orders", params={"asset_id": "BTC\n"}, headers=headers)
    assert_problem(r, 422, "validation_error")
    r = await api.client.get("/api/v1/admin/users/alice_01%0A/transactions", headers=admin)
    assert_problem(r, 422, "validation_error")


# --- 8: a wrong current password is a failed login ----------------------------------------------


async def test_wrong_current_passwords_are_counted_by_the_login_guard(api: Api) -> None:
    username, headers = await api.register()
    for _ in range(5):
        r = await api.client.post(
            "/api/v1/auth/password", json={"current_password": WRONG, "new_password": "N3w!Passw0rd-ok"},
            headers=headers,
        )
        assert_problem(r, 401, "invalid_credentials")
    # The address is now blocked: for the password endpoint and for logins, even with the right password.
    r = await api.client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": "N3w!Passw0rd-ok"},
        headers=headers,
    )
    assert_problem(r, 403, "login_blocked")
    r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert_problem(r, 403, "login_blocked")
    # Nothing changed: the old password is still the one stored.
    user = await api.container.user_dao.get_user_by_username(username)
    assert api.container.passwords.verify_password(PASSWORD, user.password_hash)


# --- 8: only the exact issued token ---------------------------------------------------------------


def _respell_last_character(segment: str) -> str:
    """The same bytes with other unused low bits in the last base64url character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0b1111, 3: 0b11}[len(segment) % 4]
    index = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[index | unused if index & unused != unused else index & ~unused]


@pytest.mark.parametrize("spelling", ["padded", "padded_twice", "respelled_signature", "padded_payload"])
async def test_only_the_exact_issued_token_string_is_accepted(api: Api, spelling: str) -> None:
    _, headers = await api.register()
    token = headers["Authorization"].removeprefix("Bearer ")
    assert (await api.client.get("/api/v1/balance", headers=headers)).status_code == 200
    header, payload, signature = token.split(".")
    if spelling == "padded":
        other = token + "="
    elif spelling == "padded_twice":
        other = token + "=="
    elif spelling == "respelled_signature":
        assert len(signature) % 4 in (2, 3)  # HS256: 32 bytes -> 43 characters
        other = f"{header}.{payload}.{_respell_last_character(signature)}"
    else:
        other = f"{header}.{payload}{'=' * (-len(payload) % 4 or 4)}.{signature}"
    assert other != token
    r = await api.client.get("/api/v1/balance", headers={"Authorization": f"Bearer {other}"})
    assert_problem(r, 401, "invalid_token")


# --- 8: unreadable bodies are 422 problems -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"amount": ' + b"9" * 5000 + b"}", "amount"),  # the number grammar names the field
        (b'{"amount": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}", "body"),
        (b"{\"amount\": " + b"[" * 60_000 + b"}", "body"),
        (b'{"amount": "10\xff\xfe"}', "body"),
    ],
    ids=["5000_digits", "nested_1000", "nested_60000_unclosed", "invalid_utf8"],
)
async def test_unreadable_bodies_are_422_problems_and_change_nothing(
    api: Api, raw: bytes, field: str
) -> None:
    username, headers = await api.register()
    r = await api.client.post(
        "/api/v1/balance/deposit", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    body = assert_problem(r, 422, "validation_error")
    assert body["errors"][0]["field"] == field
    assert body["errors"][0]["message"]
    assert await ledger(api, username) == []


# --- 10: per-account throttling with growing delays ------------------------------------------------


@pytest.fixture
async def proxied_api(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FakeClock]]:
    """An app behind a trusted proxy (the test client's address), on a clock the test moves."""
    clock = FakeClock(datetime.now(UTC))
    built, lifespan = await open_api(store_factory, clock=clock, trusted_proxies=["127.0.0.1"])
    yield built, clock
    await built.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_guesses_at_one_account_from_many_addresses_meet_growing_delays(
    proxied_api: tuple[Api, FakeClock],
) -> None:
    api, clock = proxied_api
    username, _ = await api.register()
    addresses = iter(f"198.51.100.{i}" for i in range(1, 200))

    async def attempt(password: str) -> Any:
        return await api.client.post(
            "/api/v1/auth/login",
            json={"username": username, "password": password},
            headers={"X-Forwarded-For": next(addresses)},
        )

    for _ in range(5):  # the per-IP guard never sees more than one failure per address
        assert_problem(await attempt(WRONG), 401, "invalid_credentials")
    waits = []
    for _ in range(4):
        throttled = await attempt(PASSWORD)  # even the right password waits out the delay
        assert_problem(throttled, 429, "login_throttled")
        waits.append(int(throttled.headers["retry-after"]))
        clock.advance(waits[-1])
        assert_problem(await attempt(WRONG), 401, "invalid_credentials")
    assert waits == [1, 2, 4, 8]
    # Never a lock: past the delay the owner logs in, and that resets the account's count.
    clock.advance(16)
    r = await attempt(PASSWORD)
    assert r.status_code == 200 and read(r)["access_token"]
    assert_problem(await attempt(WRONG), 401, "invalid_credentials")
    assert (await attempt(PASSWORD)).status_code == 200


async def test_the_account_delay_is_capped(proxied_api: tuple[Api, FakeClock]) -> None:
    api, clock = proxied_api
    username, _ = await api.register()
    throttle = api.container.account_throttle
    for _ in range(30):
        await throttle.record_failure(username)
    assert throttle.delay_after(30) == api.container.settings.login_account_max_delay_seconds == 60
    r = await api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.50"},
    )
    assert_problem(r, 429, "login_throttled")
    assert int(r.headers["retry-after"]) == 60
    clock.advance(60)
    r = await api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.50"},
    )
    assert r.status_code == 200


async def test_unknown_accounts_are_throttled_like_known_ones(proxied_api: tuple[Api, FakeClock]) -> None:
    api, _ = proxied_api
    statuses = []
    for i in range(7):
        r = await api.client.post(
            "/api/v1/auth/login",
            json={"username": "nobody_here", "password": WRONG},
            headers={"X-Forwarded-For": f"192.0.2.{i + 1}"},
        )
        statuses.append((r.status_code, json.loads(r.content)["code"]))
    assert statuses == [(401, "invalid_credentials")] * 5 + [(429, "login_throttled")] * 2
