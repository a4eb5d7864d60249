"""Store micro-benchmark: transact / get / query per second on each engine, in one run.

    .venv/bin/python -m benchmarks.store_bench [--ops 400] [--concurrency 1,16] [--engines sqlite,dynamodb]
                                               [--endpoint http://127.0.0.1:8000]

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
from botocore.config import Config

from cnop.common.database import keys
from cnop.common.database.dynamodb import Assumption, DynamoDBStore, decode_item
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, ItemStore, Op, Put, SortKey, Update

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
        deadline = time.monotonic() + 10
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
    parser.add_argument("--engines", default="sqlite,dynamodb,stub", help="of sqlite, dynamodb, stub")
    parser.add_argument("--endpoint", default=None, help="a running DynamoDB (Local) endpoint")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-stub", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub is not None:
        serve_stub(args.serve_stub)
        return
    started = time.time()
    results = asyncio.run(run(args))
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
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
