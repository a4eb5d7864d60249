"""`make bench-house`: 64 concurrent buys of one asset on a store that conflicts as DynamoDB does.

The scenario of decision 0025 (tests/support/house_contention.py): the app on a
`ConflictingStore` (a transaction that overlaps one in flight is cancelled and retried with the
DynamoDB engine's own back-off; each stays in flight `--latency` seconds, about a region's
TransactWriteItems), 64 funded users, one market buy each, all reaching the store at once.
For each house shard count: the buys that completed, the cancelled sends (conflicts), the
re-sends per transaction (mean and max; the policy gives up after 7), how many ran out, the
burst's wall time, and the audit. Both engines: SQLite, and DynamoDB Local (`--engines`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tests.support.house_contention import Contention, concurrent_buys

from benchmarks.store_bench import dynamodb_endpoint
from cnop.common.database.dynamodb import DynamoDBStore
from cnop.common.database.sqlite import SQLiteStore

RESULTS = Path(__file__).parent / "results" / "house_conflicts.json"


async def scenario(engine: str, endpoint: str | None, shards: int, buyers: int, latency: float) -> Contention:
    if engine == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/house.db"
            return await concurrent_buys(lambda: SQLiteStore(path), shards=shards, buyers=buyers, latency=latency)
    assert endpoint is not None
    prefix = f"h{uuid.uuid4().hex[:10]}"
    return await concurrent_buys(
        lambda: DynamoDBStore.for_local(endpoint, table_prefix=prefix), shards=shards, buyers=buyers, latency=latency
    )


def row(engine: str, result: Contention) -> dict[str, Any]:
    return {
        "engine": engine,
        "shards": result.shards,
        "buyers": result.buyers,
        "completed": result.completed,
        "failed": result.failed,
        "conflicts": result.conflicts,
        "sends": result.requests,
        "mean_retries": round(result.mean_retries, 2),
        "max_retries": result.max_retries,
        "gave_up": result.gave_up,
        "seconds": round(result.seconds, 2),
        "audit": "exact" if result.audit_ok else f"{len(result.audit_violations)} violations",
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for engine in engines:
        with dynamodb_endpoint(args.endpoint) if engine == "dynamodb" else nullcontext() as endpoint:
            for shards in args.shards:
                result = await scenario(engine, endpoint, shards, args.buyers, args.latency)
                rows.append(row(engine, result))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| engine | shards | completed | failed (503) | conflicts | sends | re-sends per txn mean / max | audit |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['shards']} | {r['completed']}/{r['buyers']} | {r['failed']} | {r['conflicts']} "
            f"| {r['sends']} | {r['mean_retries']} / {r['max_retries']} | {r['audit']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="sqlite,dynamodb")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--buyers", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each transaction stays in flight")
    parser.add_argument("--endpoint", default=None, help="a running DynamoDB Local (default: start one)")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"latency": args.latency, "load_average": os.getloadavg(), "rows": rows}, indent=2) + "\n"
    )
    print(table(rows))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
