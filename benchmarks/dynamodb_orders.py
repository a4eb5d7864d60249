"""Market orders on DynamoDB Local: the system against a bare aiobotocore loop, in one run.

    make bench-store                        # runs this after benchmarks.store_bench
    .venv/bin/python -m benchmarks.dynamodb_orders [--orders 600] [--concurrency 16] [--attempts 3]
                                                   [--variants system,http,bare] [--endpoint URL]

One DynamoDB Local (started as the test suite starts it, `tests/support/dynamodb_local.py`, with
the JVM's full JIT; or `--endpoint` / `CNOP_TEST_DYNAMODB_ENDPOINT`), one set of tables, and on it:

- **system**: market buys (0.0001 BTC) through the use case, `OrderService.place_order`, in this
  process: `--concurrency` tasks, one user each, until `--orders` orders are filled;
- **http**: the same orders through the whole app (`POST /api/v1/orders` over ASGI in process:
  middleware, auth, rate limiter, validation), as `benchmarks/scale_bench.py` drives it;
- **bare**: the very `TransactWriteItems` requests the system sent, captured from its store
  during the warm-up (one per user: same items, same condition and update expressions), each
  replayed with fresh ids in place of the captured ones (so the `attribute_not_exists` guards
  hold), by `--concurrency` tasks on one aiobotocore client with the store's own client
  configuration, retrying a `TransactionConflict` cancellation at once. Requests are built before
  the clock starts.

Attempts alternate the variants, their order rotated every attempt. Figures per variant: the
median over attempts of orders/s (wall), process CPU µs per order (this process: event loop and
client), and DynamoDB Local's CPU µs per order (the JVM's, from /proc, when this run started it);
the ratio system ÷ bare of orders/s is the issue's figure (target ≥ 0.5). `cnop audit`'s checks
run on the tables afterwards (the bare loop's transactions are real buys: the books balance).
Writes benchmarks/results/dynamodb_orders.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
from botocore.exceptions import ClientError

from benchmarks.scale_bench import PASSWORD, SECRET
from cnop.audit import run_audit
from cnop.common.config import Settings
from cnop.common.database.dynamodb import DynamoDBStore
from cnop.common.entities.order import OrderCreate, OrderType
from cnop.common.ids import new_id
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "dynamodb_orders.json"
QUANTITY = Decimal("0.0001")
ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def dynamodb_local(endpoint: str | None) -> Iterator[tuple[str, int | None]]:
    """The endpoint, and the server's pid when this run started it."""
    if endpoint:
        yield endpoint, None
        return
    from tests.support.dynamodb_local import ENDPOINT_ENV, JAVA_OPTS_ENV, DynamoDBLocal

    if os.environ.get(ENDPOINT_ENV):
        yield os.environ[ENDPOINT_ENV], None
        return
    os.environ.setdefault(JAVA_OPTS_ENV, "")  # full JIT for a benchmark (the tests favour start-up)
    with DynamoDBLocal.start() as server:
        yield server.endpoint, server.process.pid if server.process is not None else None


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process `pid` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def settings() -> Settings:
    return Settings(
        store="dynamodb",
        jwt_secret=SECRET,
        price_source="manual",
        max_price_age_seconds=86400,
        trigger_engine=False,
        rate_limit_enabled=True,  # on, as in production, with limits no run reaches
        rate_limit_per_ip="100000000/minute",
        rate_limit_per_user="100000000/minute",
        daily_deposit_limit=Decimal("1000000000"),
        daily_withdraw_limit=Decimal("1000000000"),
        log_level="WARNING",
        price_history_flush_seconds=0,
    )


@dataclass
class Sample:
    variant: str
    attempt: int
    orders: int
    orders_per_second: float
    cpu_us_per_order: float
    server_cpu_us_per_order: float
    retries: int = 0


class Bench:
    def __init__(self, endpoint: str, server_pid: int | None, concurrency: int) -> None:
        self.settings = settings()
        self.store = DynamoDBStore.for_local(endpoint, table_prefix=f"orders{uuid.uuid4().hex[:8]}")
        self.container = build_container(
            self.settings, store=self.store, passwords=PasswordManager(self.settings, argon2_params=TEST_ARGON2_PARAMS)
        )
        self.app = create_app(self.settings, container=self.container)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000)), base_url="http://bench"
        )
        self.server_pid = server_pid
        self.concurrency = concurrency
        self.users = [f"trader{n:03d}" for n in range(concurrency)]
        self.tokens: dict[str, str] = {}
        self.templates: dict[str, str] = {}  # user -> the TransactItems of one of their buys, as JSON

    async def prepare(self) -> None:
        for username in self.users:
            await self.container.accounts.register(
                RegisterRequest(
                    username=username,
                    email=f"{username}@example.com",
                    password=PASSWORD,
                    first_name="Dynamo",
                    last_name="Bench",
                )
            )
            await self.container.money.deposit(username, Decimal("100000000"))
            login = await self.http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
            assert login.status_code == 200, login.text
            self.tokens[username] = str(login.json()["access_token"])

    async def capture(self) -> None:
        """One buy per user through the use case, recording the request its store sent."""
        send = self.store._send_transaction
        sent: list[list[dict[str, Any]]] = []

        async def recording(items: list[dict[str, Any]], token: str) -> list[dict[str, Any]] | None:
            sent.append(items)
            return await send(items, token)

        self.store._send_transaction = recording  # type: ignore[method-assign]
        try:
            for username in self.users:
                sent.clear()
                await self.container.trading.place_order(username, buy())
                assert len(sent) == 1, f"a market buy sent {len(sent)} transactions"
                self.templates[username] = json.dumps(sent[0])
        finally:
            self.store._send_transaction = send  # type: ignore[method-assign]

    def bare_requests(self, orders: int) -> list[list[dict[str, Any]]]:
        """`orders` copies of the captured requests, round robin over the users, fresh ids in each."""
        requests = []
        for n in range(orders):
            requests.append(json.loads(with_fresh_ids(self.templates[self.users[n % len(self.users)]])))
        return requests

    async def run(self, variant: str, orders: int, attempt: int, client: Any) -> Sample:
        counter = itertools.count()
        retries = 0
        work: Callable[[int, str], Awaitable[None]]
        if variant == "system":

            async def work(n: int, username: str) -> None:
                await self.container.trading.place_order(username, buy())

        elif variant == "http":
            body = {"asset_id": "BTC", "quantity": str(QUANTITY), "order_type": "market_buy"}

            async def work(n: int, username: str) -> None:
                headers = {"Authorization": f"Bearer {self.tokens[username]}"}
                answer = await self.http.post("/api/v1/orders", json=body, headers=headers)
                assert answer.status_code == 201, answer.text

        else:
            requests = self.bare_requests(orders)

            async def work(n: int, username: str) -> None:
                nonlocal retries
                while True:
                    try:
                        await client.transact_write_items(
                            TransactItems=requests[n], ClientRequestToken=str(uuid.uuid4())
                        )
                        return
                    except ClientError as exc:
                        reasons = exc.response.get("CancellationReasons") or []
                        codes = {reason.get("Code") for reason in reasons}
                        if "TransactionConflict" not in codes and exc.response["Error"]["Code"] not in (
                            "TransactionConflictException",
                            "TransactionInProgressException",
                        ):
                            raise
                        retries += 1

        async def trader(index: int) -> None:
            while (n := next(counter)) < orders:
                await work(n, self.users[index])

        cpu, server, wall = time.process_time(), process_cpu(self.server_pid), time.perf_counter()
        await asyncio.gather(*(trader(i) for i in range(self.concurrency)))
        wall = time.perf_counter() - wall
        cpu, server = time.process_time() - cpu, process_cpu(self.server_pid) - server
        return Sample(
            variant,
            attempt,
            orders,
            round(orders / wall, 1),
            round(cpu / orders * 1e6, 1),
            round(server / orders * 1e6, 1),
            retries,
        )


def with_fresh_ids(text: str) -> str:
    """`text` with every ULID in it replaced by a new one (the same one wherever it recurs)."""
    fresh: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) not in fresh:
            fresh[match.group(0)] = new_id()
        return fresh[match.group(0)]

    return ULID.sub(replace, text)


def buy() -> OrderCreate:
    return OrderCreate(order_type=OrderType.MARKET_BUY, asset_id="BTC", quantity=QUANTITY)


def bare_client(store: DynamoDBStore) -> contextlib.AbstractAsyncContextManager[Any]:
    """An aiobotocore client of the store's session with the store's own client arguments."""
    client: contextlib.AbstractAsyncContextManager[Any] = store._session.create_client(
        "dynamodb", **store._client_kwargs
    )
    return client


async def main(args: argparse.Namespace) -> dict[str, Any]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    samples: list[Sample] = []
    with dynamodb_local(args.endpoint) as (endpoint, pid):
        bench = Bench(endpoint, pid, args.concurrency)
        async with bench.app.router.lifespan_context(bench.app), bench.http, bare_client(bench.store) as client:
            await bench.prepare()
            await bench.capture()
            for variant in variants:  # warm up: JIT on both sides, connections, caches
                await bench.run(variant, max(50, args.orders // 5), -1, client)
            print(f"{'variant':<8} {'attempt':>7} {'orders/s':>9} {'CPU µs':>9} {'server µs':>10} retries", flush=True)
            for attempt in range(args.attempts):
                shift = attempt % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    sample = await bench.run(variant, args.orders, attempt, client)
                    samples.append(sample)
                    print(
                        f"{variant:<8} {attempt:>7} {sample.orders_per_second:>9.1f} {sample.cpu_us_per_order:>9.0f}"
                        f" {sample.server_cpu_us_per_order:>10.0f} {sample.retries:>7}",
                        flush=True,
                    )
            report = await run_audit(bench.store)
            audit = {"ok": report.ok, "violations": report.violations[:10], "checked_users": report.checked_users}
    medians = {
        variant: {
            field: statistics.median(getattr(s, field) for s in samples if s.variant == variant)
            for field in ("orders_per_second", "cpu_us_per_order", "server_cpu_us_per_order")
        }
        for variant in variants
    }
    ratios = {}
    if "bare" in medians:
        bare = medians["bare"]["orders_per_second"]
        ratios = {f"{v}_vs_bare": round(m["orders_per_second"] / bare, 3) for v, m in medians.items() if v != "bare"}
    return {
        "benchmark": "dynamodb_orders",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "settings": {"orders": args.orders, "concurrency": args.concurrency, "attempts": args.attempts},
        "medians": medians,
        "orders_per_second_ratio": ratios,
        "audit": audit,
        "attempts": [asdict(s) for s in samples],
    }


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=600, help="orders per variant and attempt")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent tasks (one user each)")
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--variants", default="system,http,bare", help="of system, http, bare")
    parser.add_argument("--endpoint", default=None, help="a running DynamoDB (Local) endpoint")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = asyncio.run(main(args))
    print()
    print("| variant | orders/s | CPU µs per order (this process) | DynamoDB Local CPU µs per order |")
    print("|---|---:|---:|---:|")
    for variant, m in report["medians"].items():
        print(
            f"| {variant} | {m['orders_per_second']:.0f} | {m['cpu_us_per_order']:.0f}"
            f" | {m['server_cpu_us_per_order']:.0f} |"
        )
    print(f"orders/s ÷ bare: {report['orders_per_second_ratio']}  audit: {json.dumps(report['audit'])}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli()
