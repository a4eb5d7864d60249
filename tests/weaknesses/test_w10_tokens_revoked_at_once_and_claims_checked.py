"""Weak point 10 (local half): logout was a no-op, tokens had no `jti`/`aud`/`iss`.

Revocation in every process of the cloud shape and browser cookies belong to the shared-state
and web-app issues; here, in one process: logout and password change revoke at once, and
tokens with a wrong audience, issuer or algorithm are refused.
"""

from __future__ import annotations

import time
import uuid

import jwt

from tests.support.api import PASSWORD, Api
from tests.support.wire import read

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"  # make_settings' secret


async def status_with(api: Api, token: str) -> int:
    r = await api.client.get("/api/v1/auth/profile", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


async def test_logout_revokes_the_token_at_once(api: Api) -> None:
    username, headers = await api.register()
    token = headers["Authorization"].removeprefix("Bearer ")
    other = (await api.login(username))["Authorization"].removeprefix("Bearer ")
    assert await status_with(api, token) == 200
    r = await api.client.post("/api/v1/auth/logout", headers=headers)
    assert r.status_code == 200 and read(r) == {"message": "Logged out successfully"}
    assert await status_with(api, token) == 401
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": "10"}, headers=headers)
    assert r.status_code == 401
    assert await status_with(api, other) == 200  # only that token


async def test_a_password_change_revokes_every_other_token_at_once(api: Api) -> None:
    username, headers = await api.register()
    second = await api.login(username)
    new_password = "An0ther!Passw0rd"
    r = await api.client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": new_password}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert await status_with(api, second["Authorization"].removeprefix("Bearer ")) == 401
    assert await status_with(api, read(r)["access_token"]) == 200
    r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 401
    assert (await api.login(username, new_password))["Authorization"]


def claims(username: str, **changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": username,
        "role": "customer",
        "type": "access",
        "gen": 0,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": "cnop",
        "aud": "cnop-api",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


async def test_tokens_with_a_wrong_audience_issuer_algorithm_or_no_id_are_refused(api: Api) -> None:
    username, headers = await api.register()
    good = jwt.encode(claims(username), SECRET, algorithm="HS256")
    assert await status_with(api, good) == 200  # the forging recipe matches what the server issues
    forged = [
        jwt.encode(claims(username, aud="another-api"), SECRET, algorithm="HS256"),
        jwt.encode(claims(username, iss="someone-else"), SECRET, algorithm="HS256"),
        jwt.encode(claims(username, jti=None), SECRET, algorithm="HS256"),
        jwt.encode(claims(username, aud=None), SECRET, algorithm="HS256"),
        jwt.encode(claims(username), SECRET, algorithm="HS512"),
        jwt.encode(claims(username), "another-secret-that-is-long-enough-0123456789", algorithm="HS256"),
        jwt.encode(claims(username), None, algorithm="none"),
        jwt.encode(claims(username, exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
    ]
    for token in forged:
        assert await status_with(api, token) == 401, jwt.get_unverified_header(token)
