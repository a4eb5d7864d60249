"""What the API tests share: the app in process (ASGI) with its container, and their helpers.

The fixtures `api` and `fake_clock_api` are registered by tests/api/conftest.py (and the
conftest of every other folder that uses them).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx2 as httpx
import pytest
from fastapi import FastAPI

from cnop.common.clock import Clock, FakeClock
from cnop.common.config import Settings
from cnop.common.database.store import Page, SortKey
from cnop.common.entities.asset import HouseTotals
from cnop.common.entities.balance import Balance, BalanceTransaction
from cnop.common.entities.holding import AssetTransaction, Holding
from cnop.common.entities.order import Order, OrderSide, OrderStatus
from cnop.common.entities.user import UserRole
from cnop.common.idempotency import IdempotencyRecord
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import Container, build_container
from cnop.gateway.app import create_app
from cnop.market.prices import Tick
from cnop.services.user.schemas import RegisterRequest
from tests.conftest import StoreFactory
from tests.support.wire import read

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
        return {"Authorization": f"Bearer {read(r)['access_token']}"}

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
    body: dict[str, Any] = read(r)
    assert body["status"] == status and body["code"] == code
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body


@dataclass(frozen=True)
class Snapshot:
    """Everything an order may touch for one user and one asset, read through the DAOs.

    Typed entities, so a test asserts on fields (`s.balance.available`, Decimals compared
    exactly) and two snapshots compare equal only when every field of every entity is equal.
    `balance`, `holding` and `house` are None when nothing is stored. `ledger` is newest first
    (as the ledger pages), `orders` oldest first, `asset_txns` covers every asset of the user
    (by asset, oldest first), `idempotency` every stored key of the user.

    `resting` stands in for the index attributes a queued order carries (which the raw items
    used to show): for every asset the user has a queued order of, which of the user's orders
    the DAO's resting-order queries find, as `(index, side or direction, order_id)`: the trigger
    index above and below the market, the trailing index per side, and the expiry index.
    """

    balance: Balance | None
    holding: Holding | None
    ledger: list[BalanceTransaction]
    orders: list[Order]
    asset_txns: list[AssetTransaction]
    house: HouseTotals | None
    idempotency: list[IdempotencyRecord]
    resting: frozenset[tuple[str, str, str]]


T = TypeVar("T")
_ANY_PRICE = SortKey.ge(Decimal(0))  # triggers and trailing anchors are prices, never negative
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_PAGE = 1000


async def every(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a DAO's paged read, following the cursor to the end."""
    found: list[T] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found


async def ledger(api: Api, username: str) -> list[BalanceTransaction]:
    """The user's whole ledger through the BalanceDAO, newest first."""
    dao = api.container.balance_dao
    return await every(lambda at: dao.get_user_transactions(username, limit=_PAGE, cursor=at))


async def orders(api: Api, username: str) -> list[Order]:
    """Every order of the user through the OrderDAO, oldest first."""
    dao = api.container.order_dao
    return await every(lambda at: dao.get_orders_by_user(username, limit=_PAGE, cursor=at, descending=False))


async def _resting(api: Api, username: str, queued: list[Order]) -> frozenset[tuple[str, str, str]]:
    dao = api.container.order_dao
    found: list[tuple[str, str, Order]] = []
    for asset_id in sorted({o.asset_id for o in queued}):
        for direction in ("above", "below"):
            found += [
                ("trigger", direction, o) for o in await dao.get_orders_by_trigger(asset_id, direction, _ANY_PRICE)
            ]
        for side in OrderSide:
            found += [("trail", side.value, o) for o in await dao.get_trailing_orders(asset_id, side, _ANY_PRICE)]
    if queued:
        found += [("expiry", "", o) for o in await dao.get_orders_due(_FAR_FUTURE, limit=_PAGE)]
    return frozenset((index, where, o.order_id) for index, where, o in found if o.username == username)


async def snapshot(api: Api, username: str, asset_id: str = "BTC") -> Snapshot:
    """Everything an order may touch, read through the DAOs (see `Snapshot`)."""
    c = api.container
    stored = await orders(api, username)
    return Snapshot(
        balance=await c.balance_dao.find_balance(username),
        holding=await c.holding_dao.get_holding(username, asset_id),
        ledger=await ledger(api, username),
        orders=stored,
        asset_txns=await every(lambda at: c.holding_dao.get_all_asset_transactions(username, limit=_PAGE, cursor=at)),
        house=await c.asset_dao.house_totals(asset_id),
        idempotency=await every(lambda at: c.idempotency.get_records(username, limit=_PAGE, cursor=at)),
        resting=await _resting(api, username, [o for o in stored if o.status is OrderStatus.QUEUED]),
    )


async def funded_user(api: Api, amount: str = "10000") -> tuple[str, dict[str, str]]:
    username, headers = await api.register()
    await api.deposit(headers, amount)
    return username, headers
