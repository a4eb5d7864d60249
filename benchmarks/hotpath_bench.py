"""CPU per request of the hot routes, through the whole ASGI app in process, no HTTP client.

    .venv/bin/python -m benchmarks.hotpath_bench                 # every route, 3 attempts
    HOTPATH_ROUNDS=400 HOTPATH_CONCURRENCY=16 .venv/bin/python -m benchmarks.hotpath_bench
    PYTHONPATH=/path/to/other/src .venv/bin/python -m benchmarks.hotpath_bench   # the other tree, for A/B

The app of `cnop serve` (`create_app`, every middleware, rate limiting on with limits no round
reaches, the SQLite store on its thread) is called as an ASGI callable with hand-made scopes, so
that no HTTP client's own work is counted: the figure is the server's CPU per request (process
time, event loop and store thread together) above the ASGI server, which is the part this
project's code decides. `HOTPATH_CONCURRENCY` requests are in flight at once (16: the store's
batches form as they do under load). Routes: `GET /health`, `GET /api/v1/auth/profile`,
`GET /api/v1/balance`, `GET /api/v1/portfolio`, `GET /api/v1/inventory/assets`,
`GET /api/v1/orders?limit=1`, a market buy then sell (`POST /api/v1/orders`), a resting limit buy
placed and cancelled (`POST` + `DELETE /api/v1/orders/{id}`), and a 404. Each attempt measures
every route in turn; the figure is the median over attempts. Writes
`benchmarks/results/hotpath.json` (`HOTPATH_OUT` to write elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.scale_bench import env_int, settings_for
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "hotpath.json"
PASSWORD = "Str0ng!Passw0rd"


class Answer:
    __slots__ = ("body", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body = b""


class Caller:
    """Calls the ASGI app with one request and collects the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, method: str, path: str, token: str | None = None, body: bytes = b"", query: bytes = b""
    ) -> Answer:
        headers = [(b"host", b"bench"), (b"user-agent", b"hotpath"), (b"accept", b"*/*")]
        if token is not None:
            headers.append((b"authorization", b"Bearer " + token.encode("ascii")))
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False
        answer = Answer()
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer.status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        answer.body = b"".join(chunks)
        return answer


Round = Callable[[int], Awaitable[int]]
"""One request (or a pair) of a kind for client number n; returns the number of requests made."""


def expect(answer: Answer, *statuses: int) -> Answer:
    if answer.status not in statuses:
        raise AssertionError(f"{answer.status}: {answer.body[:300]!r}")
    return answer


async def setup(folder: str, users: int) -> tuple[Any, Caller, list[str]]:
    settings = settings_for(f"{folder}/hotpath.db")
    container = build_container(settings, passwords=PasswordManager(settings, argon2_params=TEST_ARGON2_PARAMS))
    app = create_app(settings, container=container)
    call = Caller(app)
    tokens = []
    for n in range(users):
        name = f"hot{n:03d}"
        await container.accounts.register(
            RegisterRequest(
                username=name, email=f"{name}@example.com", password=PASSWORD, first_name="H", last_name="P"
            )
        )
        await container.money.deposit(name, Decimal("100000"))
        login = expect(
            await call(
                "POST", "/api/v1/auth/login", body=json.dumps({"username": name, "password": PASSWORD}).encode()
            ),
            200,
        )
        tokens.append(json.loads(login.body)["access_token"])
    return app, call, tokens


def rounds(call: Caller, tokens: list[str]) -> dict[str, Round]:
    def token(n: int) -> str:
        return tokens[n % len(tokens)]

    def getter(path: str, authed: bool = True, query: bytes = b"", status: int = 200) -> Round:
        async def run(n: int) -> int:
            expect(await call("GET", path, token(n) if authed else None, query=query), status)
            return 1

        return run

    buy = json.dumps({"asset_id": "BTC", "order_type": "market_buy", "quantity": "0.0001"}).encode()
    sell = json.dumps({"asset_id": "BTC", "order_type": "market_sell", "quantity": "0.0001"}).encode()
    rest = json.dumps({"asset_id": "BTC", "order_type": "limit_buy", "quantity": "0.001", "price": "1000.00"}).encode()

    async def market(n: int) -> int:
        expect(await call("POST", "/api/v1/orders", token(n), body=buy), 201)
        expect(await call("POST", "/api/v1/orders", token(n), body=sell), 201)
        return 2

    async def resting(n: int) -> int:
        placed = expect(await call("POST", "/api/v1/orders", token(n), body=rest), 201)
        order_id = json.loads(placed.body)["data"]["order_id"]
        expect(await call("DELETE", f"/api/v1/orders/{order_id}", token(n)), 200)
        return 2

    return {
        "health": getter("/health", authed=False),
        "profile": getter("/api/v1/auth/profile"),
        "balance": getter("/api/v1/balance"),
        "portfolio": getter("/api/v1/portfolio"),
        "assets": getter("/api/v1/inventory/assets", authed=False),
        "orders list": getter("/api/v1/orders", query=b"limit=1"),
        "market buy+sell": market,
        "resting place+cancel": resting,
        "404": getter("/api/v1/nothing-here", authed=False, status=404),
    }


async def measure(run: Round, count: int, concurrency: int) -> float:
    """CPU µs per request for `count` rounds, `concurrency` at once."""
    made = 0
    next_n = 0

    async def worker() -> None:
        nonlocal made, next_n
        while next_n < count:
            n = next_n
            next_n += 1
            requests = await run(n)  # not `made += await ...`: that reads `made` before the await
            made += requests

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / made * 1e6


async def main_async() -> dict[str, Any]:
    count = env_int("HOTPATH_ROUNDS", 300)
    attempts = env_int("HOTPATH_ATTEMPTS", 3)
    concurrency = env_int("HOTPATH_CONCURRENCY", 16)
    users = env_int("HOTPATH_USERS", 16)
    only = {name.strip() for name in os.environ.get("HOTPATH_ROUTES", "").split(",") if name.strip()}
    with tempfile.TemporaryDirectory(prefix="cnop-hotpath-") as folder:
        app, call, tokens = await setup(folder, users)
        async with app.router.lifespan_context(app):
            kinds = {name: run for name, run in rounds(call, tokens).items() if not only or name in only}
            for run in kinds.values():  # warm up
                await measure(run, max(20, count // 10), concurrency)
            samples: dict[str, list[float]] = {name: [] for name in kinds}
            for attempt in range(attempts):
                for name, run in kinds.items():
                    samples[name].append(await measure(run, count, concurrency))
                print(f"attempt {attempt}: " + " ".join(f"{k}={v[-1]:.0f}µs" for k, v in samples.items()), flush=True)
    return {
        "rounds": count,
        "attempts": attempts,
        "concurrency": concurrency,
        "users": users,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "cpu_us_median": {name: round(statistics.median(values), 1) for name, values in samples.items()},
        "cpu_us": samples,
    }


def main() -> int:
    report = asyncio.run(main_async())
    out = Path(os.environ.get("HOTPATH_OUT", str(RESULTS)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(name) for name in report["cpu_us_median"])
    for name, us in report["cpu_us_median"].items():
        print(f"{name:<{width}}  {us:8.1f} µs CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
