"""Auth and profile endpoints (docs/api.md: Auth and profile)."""

from __future__ import annotations

import base64
import json
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import jwt
import pytest

from cnop.common.security.login_guard import login_guard_from_settings
from cnop.common.security.password_manager import PasswordManager
from tests.support.api import PASSWORD, Api, assert_problem, reg_body
from tests.support.wire import read


async def test_register_creates_user_email_claim_and_zero_balance(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/auth/register",
        json=reg_body(
            username="Alice_01", phone="+1 (555) 123-4567", date_of_birth="1990-05-17", marketing_emails_consent=True
        ),
    )
    assert r.status_code == 201, r.text
    body = read(r)
    assert body["message"] == "User registered successfully"
    user = body["user"]
    assert user["username"] == "alice_01"
    assert user["email"] == "alice@example.com"
    assert user["first_name"] == "Alice" and user["last_name"] == "O'Brien-Smith"
    assert user["phone"] == "+15551234567"
    assert user["date_of_birth"] == "1990-05-17"
    assert user["marketing_emails_consent"] is True
    assert user["role"] == "customer"
    assert "password" not in r.text and "password_hash" not in user
    assert await api.container.user_dao.find_user("alice_01") is not None
    assert await api.container.user_dao.email_owner("alice@example.com") == "alice_01"
    bal = await api.container.balance_dao.find_balance("alice_01")
    assert bal is not None and bal.available == Decimal("0") and bal.held == Decimal("0")


async def test_register_duplicate_username_or_email_is_409_and_changes_nothing(api: Api) -> None:
    assert (await api.client.post("/api/v1/auth/register", json=reg_body())).status_code == 201
    r = await api.client.post("/api/v1/auth/register", json=reg_body(email="other@example.com", username="ALICE_01"))
    assert_problem(r, 409, "username_taken")
    assert await api.container.user_dao.email_owner("other@example.com") is None
    r = await api.client.post("/api/v1/auth/register", json=reg_body(username="bob_0001", email="ALICE@example.com"))
    assert_problem(r, 409, "email_taken")
    assert await api.container.user_dao.find_user("bob_0001") is None
    assert await api.container.balance_dao.find_balance("bob_0001") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "short"),
        ("username", "x" * 31),
        ("username", "bad-name!"),
        ("username", "with space"),
        ("email", "not-an-email"),
        ("email", "a@b"),
        ("password", "Short1!"),
        ("password", "nouppercase1!xx"),
        ("password", "NOLOWERCASE1!XX"),
        ("password", "NoDigitsHere!!x"),
        ("password", "NoSymbols12345x"),
        ("password", "Aa1!" + "x" * 125),
        ("first_name", ""),
        ("first_name", "   "),
        ("first_name", "x" * 51),
        ("first_name", "R2D2"),
        ("last_name", "Smith!"),
        ("phone", "123"),
        ("phone", "1234567890123456"),
        ("phone", "555-CALL-NOW"),
        ("date_of_birth", "1990/01/01"),
        ("date_of_birth", "not-a-date"),
        ("date_of_birth", (date.today() + timedelta(days=1)).isoformat()),
        ("date_of_birth", (date.today() - timedelta(days=365 * 5)).isoformat()),
        ("date_of_birth", "1800-01-01"),
        ("marketing_emails_consent", "maybe"),
    ],
)
async def test_register_validation_is_422_and_stores_nothing(api: Api, field: str, value: Any) -> None:
    r = await api.client.post("/api/v1/auth/register", json=reg_body(**{field: value}))
    body = assert_problem(
        r,
        422,
        "weak_password" if field == "password" and len(value) >= 12 and len(value) <= 128 else "validation_error",
    )
    if body["code"] == "validation_error":
        assert any(field in e["field"] for e in body["errors"]), body
    assert await api.container.user_dao.find_user("alice_01") is None


@pytest.mark.parametrize("missing", ["username", "email", "password", "first_name", "last_name"])
async def test_register_missing_field_is_422(api: Api, missing: str) -> None:
    body = reg_body()
    del body[missing]
    r = await api.client.post("/api/v1/auth/register", json=body)
    problem = assert_problem(r, 422, "validation_error")
    assert any(missing in e["field"] for e in problem["errors"])


async def test_unicode_names_are_allowed(api: Api) -> None:
    r = await api.client.post("/api/v1/auth/register", json=reg_body(first_name="Zoë", last_name="Ñúñez"))
    assert r.status_code == 201
    assert read(r)["user"]["first_name"] == "Zoë"


async def test_password_is_not_trimmed(api: Api) -> None:
    padded = "  " + PASSWORD + "  "
    assert (await api.client.post("/api/v1/auth/register", json=reg_body(password=padded))).status_code == 201
    r = await api.client.post("/api/v1/auth/login", json={"username": "alice_01", "password": PASSWORD})
    assert_problem(r, 401, "invalid_credentials")
    r = await api.client.post("/api/v1/auth/login", json={"username": "alice_01", "password": padded})
    assert r.status_code == 200


async def test_login_returns_a_bearer_token_and_is_case_insensitive(api: Api) -> None:
    await api.client.post("/api/v1/auth/register", json=reg_body())
    r = await api.client.post("/api/v1/auth/login", json={"username": "ALICE_01", "password": PASSWORD})
    assert r.status_code == 200
    body = read(r)
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice_01" and {"iat", "exp", "jti", "iss", "aud", "type"} <= set(claims)


async def test_wrong_password_and_unknown_user_get_the_same_401(api: Api) -> None:
    await api.client.post("/api/v1/auth/register", json=reg_body())
    wrong = await api.client.post("/api/v1/auth/login", json={"username": "alice_01", "password": "Wr0ng!Password"})
    unknown = await api.client.post("/api/v1/auth/login", json={"username": "nobody_x", "password": "Wr0ng!Password"})
    a, b = assert_problem(wrong, 401, "invalid_credentials"), assert_problem(unknown, 401, "invalid_credentials")
    assert a["detail"] == b["detail"] and a["title"] == b["title"]


async def test_unknown_user_login_costs_about_the_same_as_a_known_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real Argon2 parameters here: with the cheap test ones the hash would not dominate.
    real = PasswordManager(api.container.settings)
    api.container.user_dao.passwords = real
    api.container.accounts.passwords = real
    await api.client.post("/api/v1/auth/register", json=reg_body())
    # Every Argon2 verification, by the hash it checked against.
    verified: list[str] = []
    hasher = real._password_hash
    verify_and_update = hasher.verify_and_update

    def counted(password: str | bytes, hashed: str | bytes) -> tuple[bool, str | None]:
        verified.append(str(hashed))
        return verify_and_update(password, hashed)

    monkeypatch.setattr(hasher, "verify_and_update", counted)

    async def median(username: str) -> float:
        """The median CPU time (this process, every thread) of four failed logins: unlike wall
        time it does not grow when other processes share the machine."""
        api.container.login_guard = login_guard_from_settings(api.container.settings, api.container.clock)
        times = []
        for _ in range(4):
            start = time.process_time()
            r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": "Wr0ng!Password"})
            times.append(time.process_time() - start)
            assert r.status_code == 401
        return sorted(times)[2]

    known = await median("alice_01")
    known_hashes = set(verified)
    verified.clear()
    unknown = await median("nobody_x")
    # One full Argon2 verification per login either way: the unknown name is checked against a
    # dummy hash of the same parameters, not skipped.
    assert len(verified) == 4 and len(set(verified)) == 1 and set(verified) != known_hashes
    assert len(known_hashes) == 1 and next(iter(known_hashes)).startswith("$argon2id$")
    assert next(iter(verified)).split("$")[:4] == next(iter(known_hashes)).split("$")[:4]
    assert 0.5 < unknown / known < 2.0


@pytest.mark.parametrize(("username", "password"), [("short", PASSWORD), ("alice_01", "short"), ("", "")])
async def test_login_malformed_is_422(api: Api, username: str, password: str) -> None:
    r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert_problem(r, 422, "validation_error")


async def test_login_guard_blocks_an_ip_after_5_failures(api: Api) -> None:
    await api.client.post("/api/v1/auth/register", json=reg_body())
    for _ in range(5):
        r = await api.client.post("/api/v1/auth/login", json={"username": "alice_01", "password": "Wr0ng!Password"})
        assert r.status_code == 401
    r = await api.client.post("/api/v1/auth/login", json={"username": "alice_01", "password": PASSWORD})
    assert_problem(r, 403, "login_blocked")


async def test_profile_get_and_update(api: Api) -> None:
    username, headers = await api.register("carol_01")
    r = await api.client.get("/api/v1/auth/profile", headers=headers)
    assert r.status_code == 200
    profile = read(r)
    assert profile["username"] == "carol_01"
    assert set(profile) >= {
        "username",
        "email",
        "first_name",
        "last_name",
        "phone",
        "date_of_birth",
        "marketing_emails_consent",
        "role",
        "created_at",
        "updated_at",
    }
    r = await api.client.put(
        "/api/v1/auth/profile",
        headers=headers,
        json={"first_name": "Caroline", "phone": "5551234567", "date_of_birth": "1985-01-02"},
    )
    assert r.status_code == 200, r.text
    assert read(r)["message"] == "Profile updated successfully"
    assert read(r)["user"]["first_name"] == "Caroline" and read(r)["user"]["phone"] == "5551234567"
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json={"phone": None, "date_of_birth": None})
    assert r.status_code == 200
    user = read(r)["user"]
    assert user["phone"] is None and user["date_of_birth"] is None and user["first_name"] == "Caroline"
    assert read(await api.client.get("/api/v1/auth/profile", headers=headers))["first_name"] == "Caroline"


@pytest.mark.parametrize("empty", ["", "   "])
async def test_an_empty_phone_means_no_phone_on_register_and_profile_update(api: Api, empty: str) -> None:
    r = await api.client.post("/api/v1/auth/register", json=reg_body(username="frank_01", phone=empty))
    assert r.status_code == 201, r.text
    assert read(r)["user"]["phone"] is None
    stored = await api.container.user_dao.find_user("frank_01")
    assert stored is not None and stored.phone is None
    headers = await api.login("frank_01")
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json={"phone": "5551234567"})
    assert r.status_code == 200 and read(r)["user"]["phone"] == "5551234567"
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json={"phone": empty, "first_name": "Franz"})
    assert r.status_code == 200, r.text
    assert read(r)["user"]["phone"] is None and read(r)["user"]["first_name"] == "Franz"
    stored = await api.container.user_dao.find_user("frank_01")
    assert stored is not None and stored.phone is None and stored.first_name == "Franz"
    assert read(await api.client.get("/api/v1/auth/profile", headers=headers))["phone"] is None


async def test_profile_email_change_moves_the_claim_and_409_when_taken(api: Api) -> None:
    await api.register("dave_001")
    _, headers = await api.register("erin_001")
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json={"email": "dave_001@example.com"})
    assert_problem(r, 409, "email_taken")
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json={"email": "New@Example.com"})
    assert r.status_code == 200 and read(r)["user"]["email"] == "new@example.com"
    assert await api.container.user_dao.email_owner("erin_001@example.com") is None
    assert await api.container.user_dao.email_owner("new@example.com") == "erin_001"


@pytest.mark.parametrize(
    "body",
    [
        {"first_name": ""},
        {"first_name": "   "},
        {"last_name": "x" * 51},
        {"first_name": "Bob2"},
        {"last_name": "Sm@th"},
        {"email": "nope"},
        {"phone": "12345"},
        {"phone": "1" * 16},
        {"date_of_birth": "2999-01-01"},
        {"date_of_birth": "01-02-1990"},
    ],
)
async def test_profile_update_validation_is_422_and_changes_nothing(api: Api, body: dict[str, Any]) -> None:
    _, headers = await api.register()
    before = read(await api.client.get("/api/v1/auth/profile", headers=headers))
    r = await api.client.put("/api/v1/auth/profile", headers=headers, json=body)
    assert_problem(r, 422, "validation_error")
    assert read(await api.client.get("/api/v1/auth/profile", headers=headers)) == before


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "token", "", "Bearer a b", "Bearer not.a.jwt", "bearer"],
)
async def test_malformed_authorization_headers_are_401(api: Api, header: str) -> None:
    for method, path in [
        ("GET", "/api/v1/auth/profile"),
        ("GET", "/api/v1/balance"),
        ("POST", "/api/v1/auth/logout"),
        ("GET", "/api/v1/balance/transactions"),
    ]:
        r = await api.client.request(method, path, headers={"Authorization": header})
        assert r.status_code == 401, (header, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_missing_authorization_is_401(api: Api) -> None:
    r = await api.client.get("/api/v1/auth/profile")
    assert_problem(r, 401, "not_authenticated")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_forged_tokens_are_refused(api: Api) -> None:
    username, headers = await api.register()
    real = headers["Authorization"].split()[1]
    claims = jwt.decode(real, options={"verify_signature": False})
    other_key = jwt.encode(claims, "another-secret-that-is-long-enough-0123456789", algorithm="HS256")
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    expired = jwt.encode(
        {**claims, "exp": int(time.time()) - 60, "iat": int(time.time()) - 4000},
        "test-secret-that-is-long-enough-for-hs256-0123456789",
        algorithm="HS256",
    )
    wrong_aud = jwt.encode(
        {**claims, "aud": "someone-else"}, "test-secret-that-is-long-enough-for-hs256-0123456789", algorithm="HS256"
    )
    for token in (other_key, alg_none, expired, wrong_aud):
        r = await api.client.get("/api/v1/auth/profile", headers={"Authorization": f"Bearer {token}"})
        assert_problem(r, 401, "invalid_token")


async def test_logout_revokes_the_token_at_once(api: Api) -> None:
    _, headers = await api.register()
    r = await api.client.post("/api/v1/auth/logout", headers=headers)
    assert r.status_code == 200 and read(r) == {"message": "Logged out successfully"}
    assert_problem(await api.client.get("/api/v1/auth/profile", headers=headers), 401, "invalid_token")
    assert_problem(await api.client.post("/api/v1/auth/logout", headers=headers), 401, "invalid_token")


async def test_public_routes_ignore_an_invalid_token(api: Api) -> None:
    r = await api.client.post("/api/v1/auth/register", json=reg_body(), headers={"Authorization": "Bearer junk"})
    assert r.status_code == 201
    r = await api.client.get("/health", headers={"Authorization": "Bearer junk"})
    assert r.status_code == 200


async def test_password_change_revokes_other_tokens(api: Api) -> None:
    username, first = await api.register()
    second = await api.login(username)
    r = await api.client.post(
        "/api/v1/auth/password",
        headers=first,
        json={"current_password": "Wr0ng!Password", "new_password": "N3w!Password-x"},
    )
    assert_problem(r, 401, "invalid_credentials")
    r = await api.client.post(
        "/api/v1/auth/password", headers=first, json={"current_password": PASSWORD, "new_password": "weak"}
    )
    assert_problem(r, 422, "weak_password")
    assert (await api.client.get("/api/v1/auth/profile", headers=second)).status_code == 200
    r = await api.client.post(
        "/api/v1/auth/password", headers=first, json={"current_password": PASSWORD, "new_password": "N3w!Password-x"}
    )
    assert r.status_code == 200, r.text
    fresh = {"Authorization": f"Bearer {read(r)['access_token']}"}
    assert_problem(await api.client.get("/api/v1/auth/profile", headers=second), 401, "invalid_token")
    assert (await api.client.get("/api/v1/auth/profile", headers=first)).status_code == 200
    assert (await api.client.get("/api/v1/auth/profile", headers=fresh)).status_code == 200
    r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 401
    assert await api.login(username, "N3w!Password-x")
