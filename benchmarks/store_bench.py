"""Store micro-benchmark: transact / get / query per second on each engine, in one run.

    .venv/bin/python -m benchmarks.store_bench [--ops 400] [--concurrency 1,16] [--engines sqlite,dynamodb]
                                               [--endpoint http://127.0.0.1:8000]
    .venv/bin/python -m benchmarks.store_bench --engines sqlite-ab,sqlite-hop [--ab-ops 2000] [--ab-attempts 3]
                                               [--ab-concurrency 1,16,64]

`sqlite-ab` (part of `make bench-store`) compares, in one run and alternating their order every
attempt, several ways of committing the same transactions on SQLite: the store with group commit
(the default), the store without it (one `BEGIN IMMEDIATE ... COMMIT` each), the store with group
commit but the item encoder before msgspec (simplejson: "simplejson writes") or the decoder
before it ("simplejson reads"), the store with its
calls run by a one-worker `ThreadPoolExecutor` as before ("executor hop"), and **bare
`sqlite3`** running the very statements the store runs, with bodies encoded once, in one thread
with no event loop, codec or conditions (the floor of the engine). Two transaction shapes: a
market order's six ops (order, guarded balance, ledger entry, holding, asset transaction, guarded
house inventory) and a withdrawal's two. Reported per shape and concurrency: the median of the
attempts in transactions/s and in CPU µs per transaction (process CPU time, both threads; the ops
are built before the clock starts, as the bare loop's bodies are encoded before), and the
ratios store ÷ bare and group ÷ no group. `sqlite-hop` times the hop to the store thread alone
(a point read, and an order-shaped transaction, at concurrency 1) on the store's queue-fed thread
against the one-worker executor it replaced, alternating, 2 × `--ab-attempts` times.

SQLite runs on a file in a temporary directory. DynamoDB runs on DynamoDB Local, started like the
test suite does (tests/support/dynamodb_local.py), or on `--endpoint` / `CNOP_TEST_DYNAMODB_ENDPOINT`.
On DynamoDB, `get` and `transact` are also measured through boto3 in a thread pool, the
alternative to aiobotocore (docs/decisions/0002-dynamodb-client.md); both send the same requests.
The engine `stub` measures the two clients alone: an HTTP server in another process answers every
request at once with a canned response, so the figures are the clients' own cost per call.

Prints a table and writes benchmarks/results/store.json. Figures from DynamoDB Local measure the
client and a local Java server, not AWS: compare engines and clients, not absolute latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import simplejson
from botocore.config import Config

from cnop.common.database import keys
from cnop.common.database import sqlite as sqlite_engine
from cnop.common.database.dynamodb import Assumption, DynamoDBStore, decode_item
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, ItemStore, NotExists, Op, Put, SortKey, Update

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
T = keys.USERS
ACCOUNTS = 64  # distinct balances, so that concurrent transactions rarely touch one item
QUERY_PARTITION = "BENCH#Q"
QUERY_ITEMS = 200
QUERY_PAGE = 20


@dataclass
class Result:
    engine: str
    client: str
    operation: str
    concurrency: int
    ops: int
    seconds: float
    ops_per_second: float
    p50_ms: float
    p99_ms: float


def balance_key(n: int) -> dict[str, str]:
    return {"pk": f"BENCH#U{n % ACCOUNTS}", "sk": "BALANCE"}


def withdrawal(n: int) -> list[Op]:
    return [
        Update(T, balance_key(n), add={"available": Decimal("-0.01")}, condition=Ge("available", Decimal("0.01"))),
        Put(T, {"pk": balance_key(n)["pk"], "sk": f"TXN#{uuid.uuid4().hex}", "amount": Decimal("-0.01")}),
    ]


async def prepare(store: ItemStore) -> None:
    await store.create_tables()
    await store.transact([Put(T, {**balance_key(n), "available": Decimal("1000000.00")}) for n in range(ACCOUNTS)])
    for start in range(0, QUERY_ITEMS, 100):
        await store.transact(
            [
                Put(T, {"pk": QUERY_PARTITION, "sk": f"ITEM#{i:05d}", "i": i, "payload": "x" * 200})
                for i in range(start, min(QUERY_ITEMS, start + 100))
            ]
        )


async def measure(
    engine: str, client: str, operation: str, fn: Callable[[int], Awaitable[Any]], ops: int, concurrency: int
) -> Result:
    latencies: list[float] = []
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < ops:
            started = time.perf_counter()
            await fn(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return Result(
        engine=engine,
        client=client,
        operation=operation,
        concurrency=concurrency,
        ops=ops,
        seconds=round(seconds, 3),
        ops_per_second=round(ops / seconds, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    )


def store_operations(store: ItemStore) -> dict[str, Callable[[int], Awaitable[Any]]]:
    return {
        "transact": lambda n: store.transact(withdrawal(n)),
        "get": lambda n: store.get(T, balance_key(n)),
        "query": lambda n: store.query(T, QUERY_PARTITION, sk=SortKey.prefix("ITEM#"), limit=QUERY_PAGE),
    }


class Boto3InThreads:
    """The alternative client: boto3 (blocking) calls on a thread pool, same requests as the store."""

    def __init__(self, store: DynamoDBStore, endpoint: str, threads: int = 64) -> None:
        self.store = store
        self.client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(max_pool_connections=threads, retries={"mode": "standard", "max_attempts": 3}),
        )
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="boto3")

    async def _run(self, fn: Callable[..., Any], **params: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, **params))

    async def get(self, n: int) -> Any:
        key = balance_key(n)
        response = await self._run(
            self.client.get_item,
            TableName=self.store.table_name(T),
            Key={"pk": {"S": key["pk"]}, "sk": {"S": key["sk"]}},
            ConsistentRead=True,
        )
        return decode_item(response["Item"])

    async def transact(self, n: int) -> None:
        now = time.time()
        items = [self.store._transact_item(op, Assumption(), now) for op in withdrawal(n)]
        await self._run(self.client.transact_write_items, TransactItems=items, ClientRequestToken=str(uuid.uuid4()))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


async def bench_engine(
    engine: str, store: ItemStore, ops: int, levels: list[int], boto3_variant: Boto3InThreads | None
) -> list[Result]:
    await prepare(store)
    operations = store_operations(store)
    alternatives: dict[str, Callable[[int], Awaitable[Any]]] = {}
    if boto3_variant is not None:
        alternatives = {"transact": boto3_variant.transact, "get": boto3_variant.get}
    for name, fn in [*operations.items(), *alternatives.items()]:  # warm up (JIT, connections, caches)
        await measure(engine, "warm-up", name, fn, max(50, ops // 4), max(levels))
    results = []
    for concurrency in levels:
        for name, fn in operations.items():
            client = "aiobotocore" if engine == "dynamodb" else "sqlite3 thread"
            results.append(await measure(engine, client, name, fn, ops, concurrency))
            print_row(results[-1])
            if name in alternatives:
                results.append(await measure(engine, "boto3+threads", name, alternatives[name], ops, concurrency))
                print_row(results[-1])
    return results


HEADER = f"{'engine':<9} {'client':<15} {'operation':<9} {'conc':>4} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}"


def print_row(r: Result) -> None:
    print(
        f"{r.engine:<9} {r.client:<15} {r.operation:<9} {r.concurrency:>4} {r.ops_per_second:>9.1f}"
        f" {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}",
        flush=True,
    )


@contextlib.contextmanager
def dynamodb_endpoint(endpoint: str | None) -> Iterator[str]:
    if endpoint:
        yield endpoint
        return
    from tests.support.dynamodb_local import ENDPOINT_ENV, JAVA_OPTS_ENV, DynamoDBLocal

    if os.environ.get(ENDPOINT_ENV):
        yield os.environ[ENDPOINT_ENV]
        return
    os.environ.setdefault(JAVA_OPTS_ENV, "")  # full JIT for a benchmark (the tests favour start-up)
    with DynamoDBLocal.start() as server:
        yield server.endpoint


# --- a DynamoDB endpoint that answers at once: the clients' own cost ---------------------------

_CANNED = {
    "DynamoDB_20120810.GetItem": {
        "Item": {"pk": {"S": "BENCH#U0"}, "sk": {"S": "BALANCE"}, "available": {"N": "1000000"}}
    },
}


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(_CANNED.get(self.headers.get("X-Amz-Target", ""), {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_stub(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _StubHandler).serve_forever()


@contextlib.contextmanager
def stub_endpoint() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.store_bench", "--serve-stub", str(port)])
    try:
        deadline = time.monotonic() + 60  # the server imports this module first: slow on a loaded machine
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


async def bench_clients(endpoint: str, ops: int, levels: list[int]) -> list[Result]:
    store = DynamoDBStore.for_local(endpoint, table_prefix="stub")
    variant = Boto3InThreads(store, endpoint, threads=max(levels))
    clients: dict[str, dict[str, Callable[[int], Awaitable[Any]]]] = {
        "aiobotocore": {
            "transact": lambda n: store.transact(withdrawal(n)),
            "get": lambda n: store.get(T, balance_key(n)),
        },
        "boto3+threads": {"transact": variant.transact, "get": variant.get},
    }
    results = []
    try:
        for operations in clients.values():
            for name, fn in operations.items():
                await measure("stub", "warm-up", name, fn, max(50, ops // 4), max(levels))
        for concurrency in levels:
            for name in ("transact", "get"):
                for client, operations in clients.items():
                    results.append(await measure("stub", client, name, operations[name], ops, concurrency))
                    print_row(results[-1])
    finally:
        variant.close()
        await store.close()
    return results


# --- SQLite: group commit on / off / bare sqlite3, A/B in one run ------------------------------

AB_USERS = 64
AB_SHAPES = ("order", "withdrawal")


def _ab_order(n: int) -> list[Op]:
    """A market buy's six ops, as the settlement builds them (bodies of a similar size)."""
    user = f"USER#ab{n % AB_USERS:02d}"
    order_id = f"{n:012d}{uuid.uuid4().hex[:14]}"
    return [
        Put(
            keys.ORDERS,
            {
                "pk": user,
                "sk": f"ORDER#{order_id}",
                "order_id": order_id,
                "username": user[5:],
                "asset_id": "BTC",
                "order_type": "market_buy",
                "status": "completed",
                "quantity": Decimal("0.00010000"),
                "price": Decimal("65000.00"),
                "total": Decimal("6.50"),
                "created_at": "2026-12-03T10:00:00.000Z",
                "updated_at": "2026-12-03T10:00:00.000Z",
            },
            NotExists(),
        ),
        Update(
            keys.USERS,
            {"pk": user, "sk": "BALANCE#USD"},
            add={"available": Decimal("-6.50")},
            set={"updated_at": "2026-12-03T10:00:00.000Z"},
            condition=Ge("available", Decimal("6.50")),
        ),
        Put(
            keys.USERS,
            {
                "pk": user,
                "sk": f"TXN#{order_id}",
                "transaction_id": order_id,
                "username": user[5:],
                "transaction_type": "order_payment",
                "amount": Decimal("-6.50"),
                "status": "completed",
                "reference_id": order_id,
                "created_at": "2026-12-03T10:00:00.000Z",
            },
            NotExists(),
        ),
        Update(
            keys.USERS,
            {"pk": user, "sk": "HOLDING#BTC"},
            add={"available": Decimal("0.00010000"), "cost_basis": Decimal("6.50")},
            set={"updated_at": "2026-12-03T10:00:00.000Z"},
            init={"asset_id": "BTC"},
        ),
        Put(
            keys.ORDERS,
            {
                "pk": user,
                "sk": f"ASSETTXN#BTC#{order_id}",
                "asset_id": "BTC",
                "quantity": Decimal("0.00010000"),
                "price": Decimal("65000.00"),
                "order_id": order_id,
                "created_at": "2026-12-03T10:00:00.000Z",
            },
            NotExists(),
        ),
        Update(
            keys.INVENTORY,
            {"pk": "ASSET#BTC", "sk": "INVENTORY"},
            add={"available": Decimal("-0.00010000"), "cash": Decimal("6.50")},
            condition=Ge("available", Decimal("0.00010000")),
        ),
    ]


def _ab_withdrawal(n: int) -> list[Op]:
    user = f"USER#ab{n % AB_USERS:02d}"
    txn = f"{n:012d}{uuid.uuid4().hex[:14]}"
    return [
        Update(
            T,
            {"pk": user, "sk": "BALANCE#USD"},
            add={"available": Decimal("-0.01")},
            condition=Ge("available", Decimal("0.01")),
        ),
        Put(
            T, {"pk": user, "sk": f"TXN#{txn}", "amount": Decimal("-0.01"), "transaction_type": "withdraw"}, NotExists()
        ),
    ]


AB_TRANSACTIONS: dict[str, Callable[[int], list[Op]]] = {"order": _ab_order, "withdrawal": _ab_withdrawal}


async def _ab_prepare(store: SQLiteStore) -> None:
    await store.create_tables()
    seed: list[Op] = [
        Put(
            keys.INVENTORY, {"pk": "ASSET#BTC", "sk": "INVENTORY", "available": Decimal("1e9"), "cash": Decimal("0.00")}
        )
    ]
    seed += [
        Put(T, {"pk": f"USER#ab{u:02d}", "sk": "BALANCE#USD", "available": Decimal("1e12")}) for u in range(AB_USERS)
    ]
    await store.transact(seed[:50])
    await store.transact(seed[50:])


_msgspec_dumps, _msgspec_loads = sqlite_engine._dumps, sqlite_engine._loads
_SIMPLEJSON_DECODER = simplejson.JSONDecoder(parse_float=Decimal, parse_int=Decimal)


def _simplejson_loads(body: str) -> Any:
    """The item decoder before msgspec: simplejson, every number parsed as a Decimal."""
    return _SIMPLEJSON_DECODER.decode(body)


def _simplejson_dumps(item: Any) -> str:
    """The item encoder before msgspec: the same text, non-ASCII escaped."""
    return str(simplejson.dumps(item, use_decimal=True, separators=(",", ":")))


class _ExecutorThread:
    """The store thread before: a one-worker ThreadPoolExecutor, answers chained by asyncio."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self.pool.submit(fn, *args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


class BareSQLite:
    """The statements `SQLiteStore` runs for a transaction, in one thread, bodies encoded beforehand."""

    def __init__(self, path: str, shape: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # What the store would read and write for transaction 0: op kinds, tables, rows.
        self.plan: list[tuple[str, str, list[Any]]] = []
        for op in AB_TRANSACTIONS[shape](0):
            if isinstance(op, Put) and isinstance(op.condition, NotExists):
                self.plan.append(("new", op.table, sqlite_engine._columns(op.item)))
            elif isinstance(op, Update):
                item = {**op.key, **op.set, **op.init, **{a: Decimal(v) for a, v in op.add.items()}}
                self.plan.append(("update", op.table, sqlite_engine._columns(item)))
            else:
                self.plan.append(("put", op.table, sqlite_engine._columns(op.item)))

    def run(self, ops: int, offset: int) -> None:
        execute = self.conn.execute
        for n in range(offset, offset + ops):
            user = f"USER#ab{n % AB_USERS:02d}"
            unique = f"{n:012d}{uuid.uuid4().hex[:14]}"
            execute("BEGIN IMMEDIATE")
            rows = []
            for kind, table, row in self.plan:
                sk = row[1]
                if kind == "update":
                    key = (row[0] if row[0].startswith("ASSET#") else user, sk)
                    execute(f"SELECT body FROM {table} WHERE pk=? AND sk=?", key).fetchone()
                    rows.append((sqlite_engine._INSERT_SQL[table], [*key, *row[2:]]))
                else:
                    rows.append(
                        (sqlite_engine._INSERT_NEW_SQL[table], [user, sk[: sk.rindex("#") + 1] + unique, *row[2:]])
                    )
            for sql, params in rows:
                execute(sql, params)
            execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


@dataclass
class ABResult:
    shape: str
    variant: str
    concurrency: int
    attempt: int
    ops: int
    tx_per_second: float
    cpu_us_per_tx: float
    batches: int | None = None


async def _ab_store_run(
    store: SQLiteStore, shape: str, ops: int, concurrency: int, offset: int
) -> tuple[float, float, int]:
    # Built before the clock starts, as the bare loop's bodies are: building ops is the caller's work.
    pending = iter([AB_TRANSACTIONS[shape](n) for n in range(offset, offset + ops)])
    commits = 0
    drain = store._drain

    def counting_drain() -> None:
        nonlocal commits
        commits += 1
        drain()

    store._drain = counting_drain  # type: ignore[method-assign]

    async def worker() -> None:
        for transaction in pending:
            await store.transact(transaction)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    store._drain = drain  # type: ignore[method-assign]
    return wall, cpu, commits


async def bench_sqlite_ab(ops: int, attempts: int, levels: list[int]) -> list[ABResult]:
    results: list[ABResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "group commit": SQLiteStore(f"{tmp}/group.db"),
            "no group commit": SQLiteStore(f"{tmp}/single.db", group_commit=False),
        }
        for store in set(stores.values()):
            await _ab_prepare(store)
        bare_store = SQLiteStore(f"{tmp}/bare.db")
        await _ab_prepare(bare_store)
        await bare_store.close()
        bares = {shape: BareSQLite(f"{tmp}/bare.db", shape) for shape in AB_SHAPES}
        stores["simplejson writes"] = stores["group commit"]  # the same store, the encoder before
        stores["simplejson reads"] = stores["group commit"]  # the same store, the decoder before
        stores["executor hop"] = SQLiteStore(f"{tmp}/executor.db")
        stores["executor hop"]._executor = _ExecutorThread()  # type: ignore[assignment]
        await _ab_prepare(stores["executor hop"])
        variants = ["bare sqlite3", *stores]
        offset = 0
        try:
            for store in stores.values():  # warm up
                for shape in AB_SHAPES:
                    await _ab_store_run(store, shape, max(100, ops // 10), 16, offset)
                    offset += ops
            print(f"{'shape':<10} {'variant':<16} {'conc':>4} {'attempt':>7} {'tx/s':>9} {'CPU µs/tx':>10} tx/commit")
            for attempt in range(attempts):
                shift = attempt % len(variants)
                order = variants[shift:] + variants[:shift]  # rotate: no variant always first
                for shape in AB_SHAPES:
                    for concurrency in levels:
                        for variant in order:
                            if variant == "bare sqlite3":
                                if concurrency != levels[0]:
                                    continue  # one thread, no concurrency: measured once per attempt
                                cpu, wall = time.process_time(), time.perf_counter()
                                bares[shape].run(ops, offset)
                                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                                commits = ops
                                level = 1
                            else:
                                store = stores[variant]
                                if variant == "simplejson writes":
                                    sqlite_engine._dumps = _simplejson_dumps  # type: ignore[assignment]
                                if variant == "simplejson reads":
                                    sqlite_engine._loads = _simplejson_loads
                                try:
                                    wall, cpu, drains = await _ab_store_run(store, shape, ops, concurrency, offset)
                                finally:
                                    sqlite_engine._dumps, sqlite_engine._loads = _msgspec_dumps, _msgspec_loads
                                commits = drains if store.group_commit else ops
                                level = concurrency
                            offset += ops
                            result = ABResult(
                                shape,
                                variant,
                                level,
                                attempt,
                                ops,
                                round(ops / wall, 1),
                                round(cpu / ops * 1e6, 1),
                                None if variant == "bare sqlite3" else commits,
                            )
                            results.append(result)
                            per_commit = f"{ops / commits:9.1f}"
                            print(
                                f"{shape:<10} {variant:<16} {level:>4} {attempt:>7} {result.tx_per_second:>9.1f}"
                                f" {result.cpu_us_per_tx:>10.1f} {per_commit}",
                                flush=True,
                            )
        finally:
            for bare in bares.values():
                bare.close()
            for store in set(stores.values()):
                await store.close()
    return results


async def bench_sqlite_hop(attempts: int, gets: int = 2000, transactions: int = 1000) -> dict[str, Any]:
    """The hop to the store thread and back, now against the executor before: CPU µs per point
    read and per order-shaped transaction at concurrency 1, the two alternating."""
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        queue_thread, executor = SQLiteStore(f"{tmp}/queue.db"), SQLiteStore(f"{tmp}/executor.db")
        executor._executor = _ExecutorThread()  # type: ignore[assignment]
        variants = {"queue thread": queue_thread, "executor": executor}
        key = {"pk": "USER#ab01", "sk": "BALANCE#USD"}
        offset = 0
        try:
            for store in variants.values():
                await _ab_prepare(store)
            for attempt in range(attempts):
                for name in list(variants) if attempt % 2 == 0 else list(variants)[::-1]:
                    store = variants[name]
                    started = time.process_time()
                    for _ in range(gets):
                        await store.get(T, key)
                    samples.setdefault(f"get, {name}", []).append((time.process_time() - started) / gets * 1e6)
                    batch = [_ab_order(n) for n in range(offset, offset + transactions)]
                    offset += transactions
                    started = time.process_time()
                    for ops in batch:
                        await store.transact(ops)
                    cpu = (time.process_time() - started) / transactions * 1e6
                    samples.setdefault(f"transact, {name}", []).append(cpu)
        finally:
            for store in variants.values():
                await store.close()
    medians = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"hop  {name:<26} {value:>8.1f} CPU µs (attempts: {[round(v) for v in samples[name]]})")
    return {"cpu_us_median": medians, "attempts": samples}


def ab_summary(results: list[ABResult]) -> list[dict[str, Any]]:
    """Medians per (shape, variant, concurrency), and the ratios to bare sqlite3 and to no group commit."""
    groups: dict[tuple[str, str, int], list[ABResult]] = {}
    for r in results:
        groups.setdefault((r.shape, r.variant, r.concurrency), []).append(r)
    medians = {
        key: (statistics.median(r.tx_per_second for r in rs), statistics.median(r.cpu_us_per_tx for r in rs))
        for key, rs in groups.items()
    }
    rows = []
    for (shape, variant, concurrency), (tps, cpu) in medians.items():
        bare_tps, bare_cpu = medians[(shape, "bare sqlite3", 1)]
        single = None if variant == "bare sqlite3" else medians.get((shape, "no group commit", concurrency))
        rows.append(
            {
                "shape": shape,
                "variant": variant,
                "concurrency": concurrency,
                "tx_per_second": round(tps, 1),
                "cpu_us_per_tx": round(cpu, 1),
                "tx_per_second_vs_bare": round(tps / bare_tps, 3),
                "bare_cpu_vs_cpu": round(bare_cpu / cpu, 3),
                "tx_per_second_vs_no_group_commit": None if single is None else round(tps / single[0], 3),
                "cpu_vs_no_group_commit": None if single is None else round(cpu / single[1], 3),
            }
        )
    return rows


def print_ab_summary(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| shape | variant | conc | tx/s | CPU µs/tx | tx/s × bare | bare CPU ÷ CPU | tx/s × no group | CPU × no group |"  # noqa: E501
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        vs_single = (
            "" if row["tx_per_second_vs_no_group_commit"] is None else f"{row['tx_per_second_vs_no_group_commit']:.2f}"
        )
        cpu_single = "" if row["cpu_vs_no_group_commit"] is None else f"{row['cpu_vs_no_group_commit']:.2f}"
        print(
            f"| {row['shape']} | {row['variant']} | {row['concurrency']} | {row['tx_per_second']:.0f} |"
            f" {row['cpu_us_per_tx']:.0f} | {row['tx_per_second_vs_bare']:.2f} | {row['bare_cpu_vs_cpu']:.2f} |"
            f" {vs_single} | {cpu_single} |"
        )


async def run(args: argparse.Namespace) -> list[Result]:
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    results: list[Result] = []
    print(HEADER)
    if "sqlite" in engines:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = SQLiteStore(str(Path(tmp) / "bench.db"))
            try:
                results += await bench_engine("sqlite", sqlite, args.ops, levels, None)
            finally:
                await sqlite.close()
    if "sqlite-ab" in engines:
        args.ab_results = await bench_sqlite_ab(
            args.ab_ops, args.ab_attempts, [int(c) for c in args.ab_concurrency.split(",")]
        )
    if "sqlite-hop" in engines:
        args.hop_results = await bench_sqlite_hop(args.ab_attempts * 2)
    if "dynamodb" in engines:
        with dynamodb_endpoint(args.endpoint) as endpoint:
            store = DynamoDBStore.for_local(endpoint, table_prefix=f"bench{uuid.uuid4().hex[:8]}")
            variant = Boto3InThreads(store, endpoint, threads=max(levels))
            try:
                results += await bench_engine("dynamodb", store, args.ops, levels, variant)
            finally:
                variant.close()
                await store.close()
    if "stub" in engines:
        with stub_endpoint() as endpoint:
            results += await bench_clients(endpoint, args.ops, levels)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=400, help="operations per measurement")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument(
        "--engines",
        default="sqlite-ab,sqlite-hop,sqlite,dynamodb,stub",
        help="of sqlite-ab, sqlite-hop, sqlite, dynamodb, stub",
    )
    parser.add_argument("--ab-ops", type=int, default=2000, help="transactions per sqlite-ab measurement")
    parser.add_argument("--ab-attempts", type=int, default=3, help="alternating sqlite-ab attempts")
    parser.add_argument("--ab-concurrency", default="1,16,64", help="sqlite-ab concurrency levels")
    parser.add_argument("--endpoint", default=None, help="a running DynamoDB (Local) endpoint")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-stub", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub is not None:
        serve_stub(args.serve_stub)
        return
    started = time.time()
    args.ab_results, args.hop_results = [], None
    results = asyncio.run(run(args))
    summary = ab_summary(args.ab_results) if args.ab_results else []
    if summary:
        print_ab_summary(summary)
    report = {
        "benchmark": "store",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "settings": {"ops": args.ops, "concurrency": args.concurrency, "engines": args.engines},
        "notes": (
            "dynamodb = DynamoDB Local on this machine; stub = an endpoint that answers at once (client cost);"
            " transact = conditional balance update + ledger put"
        ),
        "results": [asdict(r) for r in results],
        "sqlite_ab": {
            "settings": {"ops": args.ab_ops, "attempts": args.ab_attempts, "concurrency": args.ab_concurrency},
            "summary": summary,
            "attempts": [asdict(r) for r in args.ab_results],
        },
        "sqlite_hop": args.hop_results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
