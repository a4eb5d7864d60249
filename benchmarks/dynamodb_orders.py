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
Then the same variants but `http` again on an endpoint that answers every request at once
(`benchmarks/store_bench.py`'s stub, `--stub-attempts`): this process's CPU per order alone,
free of DynamoDB Local's noise, the asset cached throughout. Each `system, ...` variant undoes
one change of decision 0026 for its length (`system, validation on`: botocore's client-side
parameter validation; `system, boto3 codec`: boto3's TypeSerializer, every value's exponent marker worked out the
general way, and JSON-keyed placeholders),
for an A/B of each in the same run. Writes benchmarks/results/dynamodb_orders.json.
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
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from benchmarks.scale_bench import PASSWORD, SECRET
from benchmarks.store_bench import stub_endpoint
from cnop.audit import run_audit
from cnop.common.config import Settings
from cnop.common.database.dynamodb import DynamoDBStore, Expression, codec, expressions
from cnop.common.entities.order import OrderCreate, OrderType
from cnop.common.ids import new_id
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "dynamodb_orders.json"
VARIANTS = {"system-validation": "system, validation on", "system-boto3-codec": "system, boto3 codec"}
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
        self.validating: Any = None  # a client like the store's, with botocore's parameter validation

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

    async def run(self, variant: str, orders: int, attempt: int, client: Any, validating: Any = None) -> Sample:
        counter = itertools.count()
        retries = 0
        work: Callable[[int, str], Awaitable[None]]
        if variant.startswith("system"):

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

        with lever(variant, self.store, validating if validating is not None else self.validating):
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


# --- the levers of decision 0026, each undone for its "system, ..." variant ------------------


def _boto3_serialize(value: Any) -> codec.AttributeValue:
    """`codec.serialize` before decision 0026: boto3's TypeSerializer for every value."""
    try:
        result: codec.AttributeValue = codec._SERIALIZER.serialize(value)
    except ArithmeticError as exc:
        raise ValueError(f"number out of DynamoDB's range (38 digits): {value}") from exc
    return result


def _marker_of_before(value: Any) -> tuple[str, codec.AttributeValue] | None:
    """`codec.marker_of` before decision 0026: every value through the general path."""
    if codec.is_number(value):
        number = Decimal(value)
        exponent = codec.exponent_of(number)
        if exponent == codec.exponent_of(codec.canonical(number)):
            return None
        return (codec.EXACT, {"N": str(exponent)}) if exponent > 0 else (codec.SCALE, {"NS": [str(exponent)]})
    exponents = []
    needed = False
    for number in codec.numbers_in(value):
        exponent = codec.exponent_of(number)
        if exponent == codec.exponent_of(codec.canonical(number)):
            exponents.append("")
        else:
            exponents.append(str(exponent))
            needed = True
    return (codec.SCALE, {"S": ",".join(exponents)}) if needed else None


def _json_raw_value(self: Expression, value: codec.AttributeValue) -> str:
    """`Expression.raw_value` before decision 0026: every value told apart by its JSON text."""
    ident = ("", json.dumps(value, sort_keys=True, default=repr))
    placeholder = self._value_ids.get(ident)
    if placeholder is None:
        placeholder = self._value_ids[ident] = f":v{len(self._value_ids)}"
        self.values[placeholder] = value
    return placeholder


@contextlib.contextmanager
def lever(variant: str, store: DynamoDBStore, validating: Any) -> Iterator[None]:
    """The code as it was before one lever, for the length of a `system, ...` variant."""
    if variant == "system, validation on":
        client, store._dynamodb = store._dynamodb, validating
        try:
            yield
        finally:
            store._dynamodb = client
    elif variant == "system, boto3 codec":
        serialize, marker_of, raw_value = codec.serialize, codec.marker_of, Expression.raw_value
        for module in (codec, expressions):
            setattr(module, "serialize", _boto3_serialize)  # noqa: B010
            setattr(module, "marker_of", _marker_of_before)  # noqa: B010
        setattr(Expression, "raw_value", _json_raw_value)  # noqa: B010
        try:
            yield
        finally:
            for module in (codec, expressions):
                setattr(module, "serialize", serialize)  # noqa: B010
                setattr(module, "marker_of", marker_of)  # noqa: B010
            setattr(Expression, "raw_value", raw_value)  # noqa: B010
    else:
        yield


def validating_client(store: DynamoDBStore) -> contextlib.AbstractAsyncContextManager[Any]:
    """A client like the store's with botocore's client-side parameter validation on (as before)."""
    kwargs = dict(store._client_kwargs)
    kwargs["config"] = kwargs["config"].merge(AioConfig(parameter_validation=True))
    client: contextlib.AbstractAsyncContextManager[Any] = store._session.create_client("dynamodb", **kwargs)
    return client


async def stub_ab(bench: Bench, variants: list[str], orders: int, attempts: int) -> dict[str, Any]:
    """The variants again, on an endpoint that answers every request at once (store_bench's stub):
    this process's CPU per order alone, without DynamoDB Local's noise. The asset is cached for
    the length of it (the stub has no items), so every order is its one `TransactWriteItems`."""
    store, assets = bench.store, bench.container.asset_dao
    variants = [v for v in variants if v != "http"]  # the stub has no users to authenticate
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    with stub_endpoint() as endpoint:
        kwargs = {**store._client_kwargs, "endpoint_url": endpoint}
        validating_kwargs = {**kwargs, "config": kwargs["config"].merge(AioConfig(parameter_validation=True))}
        async with (
            store._session.create_client("dynamodb", **kwargs) as stub,
            store._session.create_client("dynamodb", **validating_kwargs) as stub_validating,
        ):
            real, cache_seconds = store._dynamodb, assets.cache_seconds
            assets.cache_seconds = 1e9
            assert await assets.find_asset("BTC") is not None
            store._dynamodb = stub
            try:
                for variant in variants:
                    await bench.run(variant, max(50, orders // 4), -1, stub, stub_validating)
                for attempt in range(attempts):
                    shift = attempt % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        sample = await bench.run(variant, orders, attempt, stub, stub_validating)
                        samples[variant].append(sample.cpu_us_per_order)
            finally:
                store._dynamodb, assets.cache_seconds = real, cache_seconds
    medians = {variant: round(statistics.median(values), 1) for variant, values in samples.items()}
    for variant, value in medians.items():
        print(f"stub  {variant:<22} {value:>8.0f} CPU µs per order (attempts: {[round(v) for v in samples[variant]]})")
    return {"settings": {"orders": orders, "attempts": attempts}, "cpu_us_median": medians, "attempts": samples}


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
    variants = [VARIANTS.get(v.strip(), v.strip()) for v in args.variants.split(",") if v.strip()]
    samples: list[Sample] = []
    with dynamodb_local(args.endpoint) as (endpoint, pid):
        bench = Bench(endpoint, pid, args.concurrency)
        async with (
            bench.app.router.lifespan_context(bench.app),
            bench.http,
            bare_client(bench.store) as client,
            validating_client(bench.store) as bench.validating,
        ):
            await bench.prepare()
            await bench.capture()
            for variant in variants:  # warm up: DynamoDB Local's JIT, connections, caches
                await bench.run(variant, args.warmup, -1, client)
            print(f"{'variant':<22} {'attempt':>7} {'orders/s':>9} {'CPU µs':>9} {'server µs':>10} retries", flush=True)
            for attempt in range(args.attempts):
                shift = attempt % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    sample = await bench.run(variant, args.orders, attempt, client)
                    samples.append(sample)
                    print(
                        f"{variant:<22} {attempt:>7} {sample.orders_per_second:>9.1f} {sample.cpu_us_per_order:>9.0f}"
                        f" {sample.server_cpu_us_per_order:>10.0f} {sample.retries:>7}",
                        flush=True,
                    )
            report = await run_audit(bench.store)
            stub = await stub_ab(bench, variants, args.stub_orders, args.stub_attempts) if args.stub_attempts else {}
            audit = {"ok": report.ok, "violations": report.violations[:10], "checked_users": report.checked_users}
    medians = {
        variant: {
            field: statistics.median(getattr(s, field) for s in samples if s.variant == variant)
            for field in ("orders_per_second", "cpu_us_per_order", "server_cpu_us_per_order")
        }
        for variant in variants
        if any(s.variant == variant for s in samples)
    }
    ratios, cpu_ratios = {}, {}
    if "bare" in medians:
        bare, bare_cpu = medians["bare"]["orders_per_second"], medians["bare"]["cpu_us_per_order"]
        ratios = {v: round(m["orders_per_second"] / bare, 3) for v, m in medians.items() if v != "bare"}
        cpu_ratios = {v: round(bare_cpu / m["cpu_us_per_order"], 3) for v, m in medians.items() if v != "bare"}
    return {
        "benchmark": "dynamodb_orders",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "settings": {"orders": args.orders, "concurrency": args.concurrency, "attempts": args.attempts},
        "medians": medians,
        "orders_per_second_vs_bare": ratios,
        "bare_cpu_vs_cpu": cpu_ratios,
        "audit": audit,
        "attempts": [asdict(s) for s in samples],
        "stub": stub,
    }


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=600, help="orders per variant and attempt")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent tasks (one user each)")
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="orders per variant before measuring")
    parser.add_argument(
        "--variants",
        default="system,http,bare,system-validation,system-boto3-codec",
        help="of system, http, bare, system-validation, system-boto3-codec",
    )
    parser.add_argument("--stub-orders", type=int, default=400, help="orders per variant and attempt on the stub")
    parser.add_argument("--stub-attempts", type=int, default=5, help="attempts on the stub (0: none)")
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
    print(f"orders/s ÷ bare: {report['orders_per_second_vs_bare']}")
    print(f"bare CPU ÷ CPU (this process): {report['bare_cpu_vs_cpu']}")
    if report["stub"]:
        stub = report["stub"]["cpu_us_median"]
        print(
            f"on the stub, bare CPU ÷ CPU: { {v: round(stub['bare'] / c, 3) for v, c in stub.items() if v != 'bare'} }"
        )
    print(f"audit: {json.dumps(report['audit'])}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli()
