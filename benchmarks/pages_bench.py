"""Server time of every web page: the whole app in process (middleware, session, services, Jinja).

A user with cash, three holdings, resting orders and a ledger of ~60 entries; each page is
requested `BENCH_PAGE_ROUNDS` times (after 5 warm-up requests) through the ASGI app, so the
figure is the server's own time without sockets or a browser. Run:

    make bench-pages                                    # or: .venv/bin/python -m benchmarks.pages_bench
    BENCH_PAGE_ROUNDS=200 .venv/bin/python -m benchmarks.pages_bench

Writes benchmarks/results/pages.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx

from cnop.common.config import Settings
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.entities.order import OrderCreate, OrderType
from cnop.common.entities.user import UserRole
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.market.prices import Tick
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "pages.json"
PASSWORD = "Str0ng!Passw0rd"
PAGES = [
    ("markets", "GET", "/"),
    ("markets search", "GET", "/?q=bit"),
    ("login", "GET", "/login"),
    ("signup", "GET", "/signup"),
    ("dashboard", "GET", "/dashboard"),
    ("asset", "GET", "/assets/BTC"),
    ("order preview", "POST", "/assets/BTC/preview"),
    ("orders", "GET", "/orders"),
    ("ledger", "GET", "/ledger"),
    ("ledger csv", "GET", "/ledger.csv"),
    ("cash", "GET", "/cash"),
    ("profile", "GET", "/profile"),
    ("admin", "GET", "/admin"),
    ("admin ledger", "GET", "/admin/ledger?username=bench_trader"),
]


async def main() -> dict[str, Any]:
    rounds = int(os.environ.get("BENCH_PAGE_ROUNDS", "100"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            store=f"sqlite:///{tmp}/pages.db",
            jwt_secret="bench-secret-that-is-long-enough-0123456789",
            price_source="manual",
            trigger_engine=False,
            rate_limit_enabled=False,
            log_level="WARNING",
            price_history_flush_seconds=0,
        )
        store = SQLiteStore(f"{tmp}/pages.db")
        container = build_container(
            settings, store=store, passwords=PasswordManager(settings, argon2_params=TEST_ARGON2_PARAMS)
        )
        app = create_app(settings, container=container)
        async with app.router.lifespan_context(app):
            for username, role in (("bench_trader", UserRole.CUSTOMER), ("bench_admin1", UserRole.ADMIN)):
                await container.accounts.register(
                    RegisterRequest(
                        username=username,
                        email=f"{username}@example.com",
                        password=PASSWORD,
                        first_name="Bench",
                        last_name="Mark",
                    ),
                    role=role,
                )
            # Prices with a day of history, so sparklines and the chart have points.
            now = container.clock.now()
            for asset in container.catalogue:
                points = [
                    Tick(
                        asset.asset_id,
                        asset.price_usd * (1 + Decimal(step % 7 - 3) / 100),
                        now - timedelta(minutes=30 * step),
                    )
                    for step in range(48, 0, -1)
                ]
                container.price_book.restore(asset.asset_id, points)
            await container.money.deposit("bench_trader", Decimal("9000"))
            for asset_id, quantity in (("BTC", "0.01"), ("ETH", "0.2"), ("SOL", "3")):
                await container.trading.place_order(
                    "bench_trader",
                    OrderCreate(order_type=OrderType.MARKET_BUY, asset_id=asset_id, quantity=Decimal(quantity)),
                )
            for n in range(25):
                await container.trading.place_order(
                    "bench_trader",
                    OrderCreate(
                        order_type=OrderType.LIMIT_BUY,
                        asset_id="ETH",
                        quantity=Decimal("0.01"),
                        price=Decimal(1000 + n),
                    ),
                )
            for _ in range(30):
                await container.money.deposit("bench_trader", Decimal("1.5"))

            results: dict[str, Any] = {}
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://bench") as trader,
                httpx.AsyncClient(transport=transport, base_url="http://bench") as admin,
            ):
                for client, username in ((trader, "bench_trader"), (admin, "bench_admin1")):
                    page = await client.get("/login")
                    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                    assert token
                    r = await client.post(
                        "/login", data={"csrf_token": token.group(1), "username": username, "password": PASSWORD}
                    )
                    assert r.status_code == 303, r.text
                csrf = trader.cookies.get("cnop_csrf") or ""
                for name, method, path in PAGES:
                    client = admin if name.startswith("admin") else trader
                    timings = []
                    for attempt in range(rounds + 5):
                        started = time.perf_counter()
                        if method == "GET":
                            r = await client.get(path)
                        else:
                            r = await client.post(
                                path,
                                data={"side": "buy", "kind": "limit", "quantity": "0.01", "price": "60000"},
                                headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
                            )
                        elapsed = (time.perf_counter() - started) * 1000
                        assert r.status_code == 200, (name, r.status_code, r.text[:300])
                        if attempt >= 5:
                            timings.append(elapsed)
                    timings.sort()
                    results[name] = {
                        "path": path,
                        "median_ms": round(statistics.median(timings), 2),
                        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
                        "bytes": len(r.content),
                    }
                    row = results[name]
                    print(f"{name:16s} {path:40s} median {row['median_ms']:7.2f} ms   p95 {row['p95_ms']:7.2f} ms")
    return {"rounds": rounds, "pages": results}


if __name__ == "__main__":
    report = asyncio.run(main())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS}")
