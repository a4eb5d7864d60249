"""The caller behind a token is read once, then remembered until the user or the token changes.

Logout and a password change taking effect at once are in
tests/weaknesses/test_w10_tokens_revoked_at_once_and_claims_checked.py; across processes in
tests/system/test_shared_state_processes.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api
from tests.support.wire import read


def count_reads(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each read of a caller from the store, by username."""
    reads: list[str] = []
    users = api.container.user_dao
    original = users.find_user_with_live_token

    async def counted(username: str, jti: str) -> Any:
        reads.append(username)
        return await original(username, jti)

    monkeypatch.setattr(users, "find_user_with_live_token", counted)
    return reads


async def test_a_tokens_caller_is_read_once_for_many_requests(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    username, headers = await api.register()
    reads = count_reads(api, monkeypatch)
    for path in ("/api/v1/auth/profile", "/api/v1/balance", "/api/v1/portfolio", "/api/v1/orders"):
        r = await api.client.get(path, headers=headers)
        assert r.status_code == 200, r.text
    assert reads == [username]


async def test_a_profile_change_is_seen_through_every_token_at_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    username, first = await api.register()
    second = await api.login(username)
    for headers in (first, second):
        assert read(await api.client.get("/api/v1/auth/profile", headers=headers))["first_name"] == "Ada"
    reads = count_reads(api, monkeypatch)
    r = await api.client.put("/api/v1/auth/profile", headers=first, json={"first_name": "Augusta"})
    assert r.status_code == 200, r.text
    for headers in (first, second):
        assert read(await api.client.get("/api/v1/auth/profile", headers=headers))["first_name"] == "Augusta"
    assert reads.count(username) == 2  # each token read again once, after the change


async def test_a_logout_drops_only_that_token(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    username, first = await api.register()
    second = await api.login(username)
    for headers in (first, second):
        assert (await api.client.get("/api/v1/balance", headers=headers)).status_code == 200
    reads = count_reads(api, monkeypatch)
    assert (await api.client.post("/api/v1/auth/logout", headers=first)).status_code == 200
    assert (await api.client.get("/api/v1/balance", headers=first)).status_code == 401
    assert (await api.client.get("/api/v1/balance", headers=second)).status_code == 200
    assert reads == [username]  # the revoked token read (and refused); the other still remembered


async def test_zero_seconds_reads_the_caller_on_every_request(
    monkeypatch: pytest.MonkeyPatch, store_factory: Any
) -> None:
    from tests.support.api import open_api

    api, lifespan = await open_api(store_factory, principal_cache_seconds=0)
    try:
        username, headers = await api.register()
        reads = count_reads(api, monkeypatch)
        for _ in range(3):
            assert (await api.client.get("/api/v1/balance", headers=headers)).status_code == 200
        assert reads == [username] * 3
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
