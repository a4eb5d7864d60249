"""Weak point 7: check-then-put let a concurrent registration overwrite a user and password."""

from __future__ import annotations

import asyncio

from tests.support.api import PASSWORD, Api
from tests.support.books import exact
from tests.support.wire import read


def body(username: str, email: str, password: str) -> dict[str, str]:
    return {"username": username, "email": email, "password": password, "first_name": "Ada", "last_name": "Lovelace"}


async def test_twenty_concurrent_registrations_of_one_username_make_one_account(api: Api) -> None:
    passwords = [f"{PASSWORD}{n:02d}" for n in range(20)]
    results = await asyncio.gather(
        *(
            api.client.post("/api/v1/auth/register", json=body("same_name", f"u{n}@example.com", p))
            for n, p in enumerate(passwords)
        )
    )
    assert sorted(r.status_code for r in results) == [201] + [409] * 19
    assert {exact(r)["code"] for r in results if r.status_code == 409} == {"username_taken"}
    winner = next(p for p, r in zip(passwords, results, strict=True) if r.status_code == 201)
    login = await api.client.post("/api/v1/auth/login", json={"username": "same_name", "password": winner})
    assert login.status_code == 200, login.text
    # A few of the others (the login guard blocks this client after five failures).
    for loser in [p for p in passwords if p != winner][:3]:
        r = await api.client.post("/api/v1/auth/login", json={"username": "same_name", "password": loser})
        assert r.status_code == 401
    r = await api.client.get(
        "/api/v1/auth/profile", headers={"Authorization": f"Bearer {read(login)['access_token']}"}
    )
    winner_email = next(f"u{n}@example.com" for n, r in enumerate(results) if r.status_code == 201)
    assert read(r)["email"] == winner_email


async def test_twenty_concurrent_registrations_of_one_email_make_one_account(api: Api) -> None:
    results = await asyncio.gather(
        *(
            api.client.post("/api/v1/auth/register", json=body(f"mail_user_{n:02d}", "shared@example.com", PASSWORD))
            for n in range(20)
        )
    )
    assert sorted(r.status_code for r in results) == [201] + [409] * 19
    assert {exact(r)["code"] for r in results if r.status_code == 409} == {"email_taken"}
    winner = next(n for n, r in enumerate(results) if r.status_code == 201)
    r = await api.client.post("/api/v1/auth/login", json={"username": f"mail_user_{winner:02d}", "password": PASSWORD})
    assert r.status_code == 200
    for n in [n for n in range(20) if n != winner][:3]:  # the others made no account
        r = await api.client.post("/api/v1/auth/login", json={"username": f"mail_user_{n:02d}", "password": PASSWORD})
        assert r.status_code == 401
