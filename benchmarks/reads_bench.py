"""The reads mix in process: CPU per request of each route of `make bench`'s `reads` scenario.

    .venv/bin/python -m benchmarks.reads_bench              # READS_ROUNDS=2000 READS_USERS=20

The whole ASGI app (middleware, auth, rate limiter, routes, services, SQLite store on its thread)
driven by a minimal ASGI caller in this process (no sockets, no HTTP client library), so the
figure is the server's own work per request: process CPU time (loop and store thread) per
request, the median over `READS_ATTEMPTS` attempts of `READS_ROUNDS` requests per route, each
route measured in a block of its own so that its cost is not averaged with the others. Every user
holds three assets (as in `make bench`). Writes benchmarks/results/reads.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.scale_bench import env_int, settings_for
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "reads.json"
PASSWORD = "Str0ng!Passw0rd"
ROUTES = (
    ("/health", False),
    ("/api/v1/auth/profile", True),
    ("/api/v1/inventory/assets", False),
    ("/api/v1/balance", True),
    ("/api/v1/portfolio", True),
)


class Asgi:
    """Calls the app as uvicorn would for a GET without a body; returns (status, headers, body)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def get(self, path: str, token: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
        if token is not None:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
            "state": {},
        }
        sent = False
        out: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                out["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await self.app(scope, receive, send)
        return out["status"], out["headers"], out["body"]


async def main() -> int:
    rounds = env_int("READS_ROUNDS", 2000)
    attempts = env_int("READS_ATTEMPTS", 3)
    users = env_int("READS_USERS", 20)
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/reads.db"
        settings = settings_for(path)
        container = build_container(
            settings, store=SQLiteStore(path), passwords=PasswordManager(settings, argon2_params=TEST_ARGON2_PARAMS)
        )
        app = create_app(settings, container=container)
        async with app.router.lifespan_context(app):
            tokens: list[str] = []
            for n in range(users):
                name = f"reader_{n:03d}"
                await container.accounts.register(
                    RegisterRequest(
                        username=name, email=f"{name}@example.com", password=PASSWORD, first_name="R", last_name="B"
                    )
                )
                await container.money.deposit(name, Decimal(20000))
                token = container.accounts.issue_token(await container.user_dao.get_user_by_username(name))
                tokens.append(token.access_token)
                for asset, quantity in (("BTC", "0.002"), ("ETH", "0.02"), ("SOL", "1")):
                    await container.trading.place_order(
                        name,
                        _order(asset, quantity),
                    )
            client = Asgi(app)
            for path, authed in ROUTES:  # warm-up, and every answer must be a 200
                status, _, body = await client.get(path, tokens[0] if authed else None)
                assert status == 200, (path, status, body[:300])
            per_route: dict[str, list[float]] = {path: [] for path, _ in ROUTES}
            for attempt in range(attempts):
                order = ROUTES if attempt % 2 == 0 else tuple(reversed(ROUTES))
                for path, authed in order:
                    start = time.process_time()
                    for n in range(rounds):
                        await client.get(path, tokens[n % users] if authed else None)
                    per_route[path].append((time.process_time() - start) / rounds * 1e6)
    result = {
        "rounds": rounds,
        "attempts": attempts,
        "users": users,
        "cpu_us_per_request": {path: round(statistics.median(v), 1) for path, v in per_route.items()},
        "mix_cpu_us_per_request": round(statistics.mean(statistics.median(v) for v in per_route.values()), 1),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for path, figure in result["cpu_us_per_request"].items():
        print(f"{path:32s} {figure:8.1f} µs CPU per request")
    print(f"{'mix (mean)':32s} {result['mix_cpu_us_per_request']:8.1f} µs   load {os.getloadavg()[0]:.1f}")
    return 0


def _order(asset: str, quantity: str) -> Any:
    from cnop.common.entities.order import OrderCreate

    return OrderCreate.model_validate({"order_type": "market_buy", "asset_id": asset, "quantity": quantity})


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
