"""The web app in process (ASGI), for page tests that need no browser: a client with cookies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx2 as httpx
from fastapi import FastAPI

from cnop.common.config import Settings
from cnop.common.database.store import ItemStore
from cnop.common.entities.user import UserRole
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import Container, build_container
from cnop.gateway.app import create_app
from cnop.market.prices import Tick
from cnop.services.user.schemas import RegisterRequest

PASSWORD = "Str0ng!Passw0rd"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def web_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "store": "sqlite://:memory:",
        "jwt_secret": "test-secret-that-is-long-enough-for-hs256-0123456789",
        "rate_limit_per_ip": "100000/minute",
        "rate_limit_per_user": "100000/minute",
        "price_source": "manual",
        "trigger_engine": False,
        "price_history_flush_seconds": 0,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Web:
    app: FastAPI
    container: Container
    lifespan: Any
    clients: list[httpx.AsyncClient]

    def browser(self, client_ip: str = "127.0.0.1", base_url: str = "http://testserver") -> httpx.AsyncClient:
        """A new client with its own cookie jar (one browser)."""
        transport = httpx.ASGITransport(app=self.app, client=(client_ip, 50000))
        client = httpx.AsyncClient(transport=transport, base_url=base_url, follow_redirects=False)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        await self.lifespan.__aexit__(None, None, None)

    def set_price(self, asset_id: str, price: str) -> None:
        self.container.price_book.apply([Tick(asset_id, Decimal(price), self.container.clock.now())])

    async def make_user(self, username: str, *, admin: bool = False) -> None:
        request = RegisterRequest(
            username=username, email=f"{username}@example.com", password=PASSWORD, first_name="Ada", last_name="Web"
        )
        await self.container.accounts.register(request, role=UserRole.ADMIN if admin else UserRole.CUSTOMER)


async def open_web(store: ItemStore, **overrides: Any) -> Web:
    settings = web_settings(**overrides)
    container = build_container(
        settings, store=store, passwords=PasswordManager(settings, argon2_params=TEST_ARGON2_PARAMS)
    )
    app = create_app(settings, container=container)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return Web(app, container, lifespan, [])


async def csrf_of(client: httpx.AsyncClient, path: str = "/login") -> str:
    """Load a page (which sets the CSRF cookie) and return the token its forms carry."""
    page = await client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF_INPUT.search(page.text) or re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, "no CSRF token on the page"
    return match.group(1)


async def post_form(
    client: httpx.AsyncClient, path: str, data: dict[str, str], *, page: str = "/login"
) -> httpx.Response:
    token = await csrf_of(client, page)
    return await client.post(path, data={"csrf_token": token, **data})


async def log_in(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await post_form(client, "/login", {"username": username, "password": password})
