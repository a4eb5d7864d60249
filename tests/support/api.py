"""What the API tests share: the app in process (ASGI) with its container, and their helpers.

The fixtures `api` and `fake_clock_api` are registered by tests/api/conftest.py (and the
conftest of every other folder that uses them).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI

from cnop.common.clock import Clock, FakeClock
from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.store import SortKey
from cnop.common.entities.user import UserRole
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import Container, build_container
from cnop.gateway.app import create_app
from cnop.market.prices import Tick
from cnop.services.user.schemas import RegisterRequest
from tests.conftest import StoreFactory
from tests.support.house import house_totals

PASSWORD = "Str0ng!Passw0rd"
_counter = itertools.count()


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store": "sqlite://:memory:",
        "jwt_secret": "test-secret-that-is-long-enough-for-hs256-0123456789",
        "rate_limit_per_ip": "100000/minute",
        "rate_limit_per_user": "100000/minute",
        "log_json": True,
        "log_level": "INFO",
        "price_source": "manual",
        # Tests drive the engine themselves (container.triggers.process), so nothing races them.
        "trigger_engine": False,
        # Each test's fresh store creates every catalogue asset with its house shards; four keep
        # that cheap on DynamoDB Local (tests/integration/test_house_* set their own counts).
        "house_shards": 4,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Api:
    """An HTTP client for the app plus the container behind it, for asserting the store."""

    client: httpx.AsyncClient
    container: Container
    app: FastAPI

    async def register(self, username: str | None = None, **fields: Any) -> tuple[str, dict[str, str]]:
        """Register and log in a new user; returns (username, auth headers)."""
        username = username or f"user_{next(_counter):06d}"
        body = {
            "username": username,
            "email": f"{username}@example.com",
            "password": PASSWORD,
            "first_name": "Ada",
            "last_name": "Lovelace",
            **fields,
        }
        r = await self.client.post("/api/v1/auth/register", json=body)
        assert r.status_code == 201, r.text
        return username.lower(), await self.login(username)

    async def login(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        r = await self.client.post("/api/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def deposit(self, headers: dict[str, str], amount: str) -> None:
        r = await self.client.post("/api/v1/balance/deposit", json={"amount": amount}, headers=headers)
        assert r.status_code == 201, r.text

    async def admin(self) -> dict[str, str]:
        """A fresh admin user's auth headers."""
        username = f"admin_{next(_counter):06d}"
        request = RegisterRequest(
            username=username, email=f"{username}@example.com", password=PASSWORD, first_name="Ada", last_name="Admin"
        )
        await self.container.accounts.register(request, role=UserRole.ADMIN)
        return await self.login(username)

    def set_price(self, asset_id: str, price: str) -> None:
        self.container.price_book.apply([Tick(asset_id, Decimal(price), self.container.clock.now())])

    async def order(self, headers: dict[str, str], **body: Any) -> Any:
        return await self.client.post("/api/v1/orders", json=body, headers=headers)


async def open_api(store_factory: StoreFactory, clock: Clock | None = None, **overrides: Any) -> tuple[Api, Any]:
    settings = make_settings(**overrides)
    container = build_container(
        settings,
        store=store_factory(),
        passwords=PasswordManager(settings, argon2_params=TEST_ARGON2_PARAMS),
        clock=clock,
    )
    app = create_app(settings, container=container)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    return Api(client, container, app), lifespan


@pytest.fixture
async def api(store_factory: StoreFactory) -> AsyncIterator[Api]:
    built, lifespan = await open_api(store_factory)
    yield built
    await built.client.aclose()
    await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def fake_clock_api(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FakeClock]]:
    """An app whose clock moves only when the test says so."""
    clock = FakeClock(datetime.now(UTC))
    built, lifespan = await open_api(store_factory, clock=clock)
    yield built, clock
    await built.client.aclose()
    await lifespan.__aexit__(None, None, None)


def reg_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "username": "alice_01",
        "email": "Alice@Example.com",
        "password": PASSWORD,
        "first_name": "Alice",
        "last_name": "O'Brien-Smith",
    }
    body.update(overrides)
    return body


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body


async def snapshot(api: Api, username: str, asset_id: str = "BTC") -> dict[str, Any]:
    """Everything an order may touch, read straight from the store."""
    store = api.container.store
    pk = keys.user_pk(username)
    return {
        "balance": await store.get(keys.USERS, keys.balance_key(username)),
        "holding": await store.get(keys.USERS, keys.holding_key(username, asset_id)),
        "ledger": (await store.query(keys.USERS, pk, sk=SortKey.prefix(keys.TXN_PREFIX), limit=1000)).items,
        "orders": (await store.query(keys.ORDERS, pk, sk=SortKey.prefix(keys.ORDER_PREFIX), limit=1000)).items,
        "asset_txns": (await store.query(keys.ORDERS, pk, sk=SortKey.prefix(keys.ASSET_TXN_PREFIX), limit=1000)).items,
        "house": await house_totals(store, asset_id),
        "idempotency": (
            await store.query(keys.USERS, pk, sk=SortKey.prefix(keys.IDEMPOTENCY_PREFIX), limit=1000)
        ).items,
    }


async def funded_user(api: Api, amount: str = "10000") -> tuple[str, dict[str, str]]:
    username, headers = await api.register()
    await api.deposit(headers, amount)
    return username, headers
