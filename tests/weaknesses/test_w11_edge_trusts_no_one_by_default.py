"""Weak point 11: `X-Forwarded-For` trusted from anyone; unknown users answered 404; CORS `*`.

Through the app (the spoofing through uvicorn's own proxy-header handling is issue 12's
finding 1, tested through a real server with the edge fixes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import StoreFactory
from tests.support.api import PASSWORD, Api, open_api
from tests.support.wire import read


@pytest.fixture
async def edge_api(store_factory: StoreFactory) -> AsyncIterator[Api]:
    api, lifespan = await open_api(
        store_factory, rate_limit_per_ip="8/minute", cors_origins=["https://app.example.com"]
    )
    yield api
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_a_spoofed_forwarded_for_does_not_dodge_the_login_guard(api: Api) -> None:
    username, _ = await api.register()
    for n in range(5):
        r = await api.client.post(
            "/api/v1/auth/login",
            json={"username": username, "password": "Wrong!Passw0rd1"},
            headers={"X-Forwarded-For": f"203.0.113.{n}"},
        )
        assert r.status_code == 401
    r = await api.client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    assert r.status_code == 403 and read(r)["code"] == "login_blocked", r.text


async def test_a_spoofed_forwarded_for_does_not_dodge_the_rate_limit(edge_api: Api) -> None:
    statuses = []
    for n in range(10):
        r = await edge_api.client.get("/api/v1/inventory/assets/BTC", headers={"X-Forwarded-For": f"203.0.113.{n}"})
        statuses.append(r.status_code)
    assert statuses[:8] == [200] * 8 and statuses[8:] == [429, 429], statuses
    assert r.headers["content-type"].startswith("application/problem+json") and "retry-after" in r.headers


async def test_an_unknown_user_and_a_wrong_password_answer_alike(api: Api) -> None:
    username, _ = await api.register()
    wrong = await api.client.post("/api/v1/auth/login", json={"username": username, "password": "Wrong!Passw0rd1"})
    unknown = await api.client.post(
        "/api/v1/auth/login", json={"username": "nobody_here", "password": "Wrong!Passw0rd1"}
    )
    assert wrong.status_code == unknown.status_code == 401
    strip = lambda body: {k: v for k, v in body.items() if k != "request_id"}  # noqa: E731
    assert strip(read(wrong)) == strip(read(unknown))
    # Both count for the login guard: three more of either kind block this client.
    for _ in range(3):
        await api.client.post("/api/v1/auth/login", json={"username": "nobody_here", "password": "Wrong!Passw0rd1"})
    r = await api.client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 403


async def test_cors_answers_only_configured_origins_and_never_a_wildcard(edge_api: Api) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = await edge_api.client.options(
        "/api/v1/orders", headers={"Origin": "https://app.example.com", **preflight}
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example.com"
    other = await edge_api.client.options("/api/v1/orders", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    r = await edge_api.client.get("/health", headers={"Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") not in ("*", "https://evil.example")
