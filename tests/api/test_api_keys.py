"""API key management (`/api/v1/auth/api-keys`) and what a key proves, on every engine."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from cnop.common.clock import FakeClock
from cnop.common.database import keys
from cnop.common.entities.api_key import ApiKeyScope
from cnop.common.exceptions import InsufficientScope, InvalidApiKey, RateLimited
from tests.support.api import PASSWORD, Api, open_api
from tests.support.wire import read

KEYS = "/api/v1/auth/api-keys"


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = read(r)
    assert body["code"] == code
    return body


async def create_key(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.client.post(KEYS, json={"label": "my bot", **body}, headers=headers)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = read(r)
    return created


async def test_a_new_key_shows_its_secret_once_and_stores_only_a_keyed_hash(api: Api) -> None:
    username, headers = await api.register()
    with capture_logs() as logs:
        created = await create_key(api, headers, scopes=["read"])
    assert re.fullmatch(r"CK[0-9A-Z]{26}", created["key_id"])
    secret = created["secret"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)  # 32 random bytes: 256 bits
    assert created["scopes"] == ["read"] and created["label"] == "my bot"
    assert created["expires_at"] is None and created["expired"] is False and created["last_used_at"] is None
    assert "shown only this once" in created["message"]

    stored = await api.container.api_key_dao.get_api_key(created["key_id"])
    assert stored is not None
    assert secret not in repr(stored)
    assert stored.secret_hash == api.container.api_keys.hasher.hash(created["key_id"], secret)
    assert stored.username == username
    # Storage-level on purpose: no stored attribute at all (mapped to the entity or not) holds
    # the secret, which no DAO read could show.
    item = await api.container.store.get(keys.USERS, keys.api_key_key(created["key_id"]))
    assert item is not None and secret not in str(item)

    listed = await api.client.get(KEYS, headers=headers)
    assert listed.status_code == 200
    assert secret not in listed.text and stored.secret_hash not in listed.text
    body = read(listed)
    assert body["limit"] == 10
    assert [k["key_id"] for k in body["data"]] == [created["key_id"]]
    assert set(body["data"][0]) == {
        "key_id", "label", "scopes", "created_at", "expires_at", "expired", "last_used_at", "last_used_ip"
    }
    assert secret not in str(logs)
    assert [e for e in logs if e["event"] == "audit.api_key_created"] == [
        {
            "event": "audit.api_key_created",
            "log_level": "info",
            "logger": "cnop.audit",
            "username": username,
            "key_id": created["key_id"],
            "scopes": "read",
            "ip_address": "127.0.0.1",
        }
    ]


async def test_keys_are_managed_only_when_logged_in_never_with_an_api_key(api: Api) -> None:
    username, headers = await api.register()
    created = await create_key(api, headers)
    apca = {"APCA-API-KEY-ID": created["key_id"], "APCA-API-SECRET-KEY": created["secret"]}
    assert_problem(await api.client.post(KEYS, json={"label": "x"}, headers=apca), 401, "not_authenticated")
    assert_problem(await api.client.get(KEYS, headers=apca), 401, "not_authenticated")
    r = await api.client.delete(f"{KEYS}/{created['key_id']}", headers=apca)
    assert_problem(r, 401, "not_authenticated")
    assert await api.container.api_key_dao.live_count(username) == 1
    assert [k.key_id for k in await api.container.api_key_dao.get_api_keys_by_user(username)] == [created["key_id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": ""}, "label"),
        ({"label": "   "}, "label"),
        ({"label": "x" * 65}, "label"),
        ({}, "label"),
        ({"label": "bot", "scopes": []}, "scopes"),
        ({"label": "bot", "scopes": ["admin"]}, "scopes.0"),
        ({"label": "bot", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"label": "bot", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"label": "bot", "expires_at": "2099-01-01T00:00:00Z"}, "expires_at"),
    ],
)
async def test_bad_key_requests_are_422_and_create_nothing(api: Api, body: dict[str, Any], field: str) -> None:
    username, headers = await api.register()
    r = await api.client.post(KEYS, json=body, headers=headers)
    problem = assert_problem(r, 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]
    assert await api.container.api_key_dao.get_api_keys_by_user(username) == []
    assert await api.container.api_key_dao.live_count(username) == 0


async def test_the_per_user_cap_refuses_the_eleventh_live_key(api: Api) -> None:
    username, headers = await api.register()
    for i in range(10):
        await create_key(api, headers, label=f"bot {i}")
    r = await api.client.post(KEYS, json={"label": "one too many"}, headers=headers)
    assert_problem(r, 422, "api_key_limit_reached")
    listed = read(await api.client.get(KEYS, headers=headers))["data"]
    assert [k["label"] for k in listed] == [f"bot {i}" for i in range(10)]
    assert await api.container.api_key_dao.live_count(username) == 10
    # deleting one makes room again
    r = await api.client.delete(f"{KEYS}/{listed[0]['key_id']}", headers=headers)
    assert r.status_code == 204 and r.content == b""
    await create_key(api, headers, label="replacement")
    assert await api.container.api_key_dao.live_count(username) == 10


async def test_delete_revokes_the_key_and_a_key_of_another_user_is_not_found(api: Api) -> None:
    alice, alice_headers = await api.register()
    bob, bob_headers = await api.register()
    key = await create_key(api, alice_headers)
    r = await api.client.delete(f"{KEYS}/{key['key_id']}", headers=bob_headers)
    assert_problem(r, 404, "api_key_not_found")
    assert await api.container.api_key_dao.live_count(alice) == 1
    principal = await api.container.api_keys.authenticate(key["key_id"], key["secret"], ip="127.0.0.1")
    assert principal.username == alice

    with capture_logs() as logs:
        r = await api.client.delete(f"{KEYS}/{key['key_id']}", headers=alice_headers)
    assert r.status_code == 204
    assert [e["event"] for e in logs if e["event"].startswith("audit.")] == ["audit.api_key_revoked"]
    assert read(await api.client.get(KEYS, headers=alice_headers))["data"] == []
    assert await api.container.api_key_dao.live_count(alice) == 0
    with pytest.raises(InvalidApiKey):
        await api.container.api_keys.authenticate(key["key_id"], key["secret"])
    assert_problem(await api.client.delete(f"{KEYS}/{key['key_id']}", headers=alice_headers), 404, "api_key_not_found")
    assert_problem(await api.client.delete(f"{KEYS}/not-a-key", headers=alice_headers), 404, "api_key_not_found")
    assert await api.container.api_key_dao.get_api_keys_by_user(bob) == []
    assert read(await api.client.get(KEYS, headers=bob_headers))["data"] == []


async def test_a_wrong_or_malformed_secret_or_unknown_key_proves_nothing(api: Api) -> None:
    _, headers = await api.register()
    key = await create_key(api, headers)
    service = api.container.api_keys
    other_secret = service.hasher.new_secret()
    for key_id, secret in [
        (key["key_id"], other_secret),
        (key["key_id"], key["secret"][:-1]),
        (key["key_id"], ""),
        (None, key["secret"]),
        ("CK" + "0" * 26, key["secret"]),
        (key["key_id"].lower(), key["secret"]),
    ]:
        with pytest.raises(InvalidApiKey):
            await service.authenticate(key_id, secret)
    # none of those counted as a use
    stored = await api.container.api_key_dao.get_api_key(key["key_id"])
    assert stored is not None and stored.last_used_at is None


async def test_scopes_are_what_the_key_was_given(api: Api) -> None:
    _, headers = await api.register()
    read_only = await create_key(api, headers, scopes=["read"])
    trader = await create_key(api, headers, scopes=["trade", "read", "trade"])
    assert trader["scopes"] == ["read", "trade"]
    principal = await api.container.api_keys.authenticate(read_only["key_id"], read_only["secret"])
    principal.require(ApiKeyScope.READ)
    with pytest.raises(InsufficientScope):
        principal.require(ApiKeyScope.TRADE)
    full = await api.container.api_keys.authenticate(trader["key_id"], trader["secret"])
    full.require(ApiKeyScope.TRADE)


async def test_a_password_change_revokes_every_key(api: Api) -> None:
    username, headers = await api.register()
    first, second = await create_key(api, headers), await create_key(api, headers)
    with capture_logs() as logs:
        r = await api.client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "N3w!Passw0rd-long"},
            headers=headers,
        )
    assert r.status_code == 200, r.text
    revoked = sorted(e["key_id"] for e in logs if e["event"] == "audit.api_key_revoked")
    assert revoked == sorted([first["key_id"], second["key_id"]])
    for key in (first, second):
        with pytest.raises(InvalidApiKey):
            await api.container.api_keys.authenticate(key["key_id"], key["secret"])
    assert read(await api.client.get(KEYS, headers=headers))["data"] == []
    assert await api.container.api_key_dao.live_count(username) == 0


async def test_a_key_made_before_a_password_change_is_dead_even_if_still_stored(api: Api) -> None:
    username, headers = await api.register()
    key = await create_key(api, headers)
    user = await api.container.user_dao.get_user_by_username(username)
    # the generation moves on (as a password change does) without the clean-up having run
    await api.container.user_dao.change_password(user, user.password_hash, "kept-jti")
    with pytest.raises(InvalidApiKey):
        await api.container.api_keys.authenticate(key["key_id"], key["secret"])
    assert read(await api.client.get(KEYS, headers=await api.login(username)))["data"] == []


async def test_an_expired_key_is_refused_listed_as_expired_and_purged_to_make_room(
    fake_clock_api: tuple[Api, FakeClock],
) -> None:
    api, clock = fake_clock_api
    username, headers = await api.register()
    expiry = clock.now() + timedelta(hours=1)
    key = await create_key(api, headers, expires_at=expiry.isoformat())
    principal = await api.container.api_keys.authenticate(key["key_id"], key["secret"])
    assert principal.key.expires_at == expiry.replace(microsecond=expiry.microsecond // 1000 * 1000)
    clock.advance(3601)
    with pytest.raises(InvalidApiKey):
        await api.container.api_keys.authenticate(key["key_id"], key["secret"])
    listed = read(await api.client.get(KEYS, headers=headers))["data"]
    assert [(k["key_id"], k["expired"]) for k in listed] == [(key["key_id"], True)]
    with capture_logs() as logs:
        fresh = await create_key(api, headers)
    assert [(e["key_id"], e["reason"]) for e in logs if e["event"] == "audit.api_key_revoked"] == [
        (key["key_id"], "expired")
    ]
    listed = read(await api.client.get(KEYS, headers=headers))["data"]
    assert [k["key_id"] for k in listed] == [fresh["key_id"]]
    assert await api.container.api_key_dao.live_count(username) == 1


async def test_use_is_recorded_and_a_new_address_is_an_audit_event(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    username, headers = await api.register()
    key = await create_key(api, headers)
    service = api.container.api_keys
    with capture_logs() as logs:
        await service.authenticate(key["key_id"], key["secret"], ip="127.0.0.5")
        await service.authenticate(key["key_id"], key["secret"], ip="127.0.0.5")
        await service.authenticate(key["key_id"], key["secret"], ip="127.0.0.6")
    new_ip = [(e["ip_address"], e["log_level"]) for e in logs if e["event"] == "audit.api_key_new_ip"]
    assert new_ip == [("127.0.0.5", "warning"), ("127.0.0.6", "warning")]
    stored = await api.container.api_key_dao.get_api_key(key["key_id"])
    assert stored is not None
    assert stored.known_ips == ("127.0.0.5", "127.0.0.6") and stored.last_used_ip == "127.0.0.6"
    assert stored.last_used_at == clock.now().replace(microsecond=clock.now().microsecond // 1000 * 1000)
    listed = read(await api.client.get(KEYS, headers=headers))["data"][0]
    assert listed["last_used_ip"] == "127.0.0.6" and listed["last_used_at"] is not None
    assert [k.key_id for k in await api.container.api_key_dao.get_api_keys_by_user(username)] == [key["key_id"]]


async def test_the_per_key_window_counts_each_key_apart(store_factory: Any) -> None:
    api, lifespan = await open_api(store_factory, rate_limit_per_api_key="3/minute")
    try:
        _, headers = await api.register()
        first, second = await create_key(api, headers), await create_key(api, headers)
        service = api.container.api_keys
        one = await service.authenticate(first["key_id"], first["secret"])
        two = await service.authenticate(second["key_id"], second["secret"])
        for _ in range(3):
            await service.check_rate(one.key)
        with pytest.raises(RateLimited) as refused:
            await service.check_rate(one.key)
        assert 1 <= refused.value.extra["retry_after"] <= 61
        await service.check_rate(two.key)  # another key of the same user has its own window
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
