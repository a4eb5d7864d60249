"""Where a market order's CPU goes, in process: the event loop's thread, the SQLite store's thread,
and SQLite's own statements inside the latter.

    .venv/bin/python -m benchmarks.order_profile
    ORDER_PROFILE_ROUNDS=1000 .venv/bin/python -m benchmarks.order_profile
    PYTHONPATH=/path/to/other/src .venv/bin/python -m benchmarks.order_profile   # the other tree, for A/B

The app of `cnop serve` is called as in `benchmarks/hotpath_bench.py` (every middleware, the
SQLite store on its thread, 16 requests in flight), with market buys and sells of 0.0001 BTC in
turn. Per order: process CPU, the event loop thread's CPU (`time.thread_time` of the thread that
drives the requests), the store thread's CPU in its batches (`_drain`), and the store thread's
CPU inside each kind of SQL statement (`Connection.execute` timed through a thin wrapper, so the
statement figures carry a little of that wrapper's cost). Writes `benchmarks/results/order_profile.json`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hotpath_bench import measure, rounds, setup
from benchmarks.scale_bench import env_int
from cnop.common.database import sqlite

RESULTS = Path(__file__).parent / "results" / "order_profile.json"


class _Timed:
    """A connection whose `execute` adds its thread CPU to `spent[kind]` while `on` is set."""

    def __init__(self, conn: Any, spent: collections.Counter[str], counts: collections.Counter[str]) -> None:
        self._conn, self._spent, self._counts = conn, spent, counts
        self.on = False

    def execute(self, sql: str, *args: Any) -> Any:
        if not self.on:
            return self._conn.execute(sql, *args)
        started = time.thread_time_ns()
        result = self._conn.execute(sql, *args)
        spent = time.thread_time_ns() - started
        words = sql.split()
        kind = " ".join(words[:3]) if words[0] == "INSERT" else words[0]
        if words[0] == "SELECT" and len(words) > 3:
            kind = f"SELECT {words[3]}"
        self._spent[kind] += spent
        self._counts[kind] += 1
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def main_async() -> dict[str, Any]:
    count = env_int("ORDER_PROFILE_ROUNDS", 600)  # buy + sell pairs per attempt
    attempts = env_int("ORDER_PROFILE_ATTEMPTS", 3)
    spent: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    timed: list[_Timed] = []
    drains = [0.0]

    connection, drain = sqlite.SQLiteStore._connection, sqlite.SQLiteStore._drain

    def wrapped_connection(self: sqlite.SQLiteStore) -> Any:
        conn = connection(self)
        if not timed:
            timed.append(_Timed(conn, spent, counts))
        return timed[0] if timed[0]._conn is conn else conn

    def timed_drain(self: sqlite.SQLiteStore) -> None:
        started = time.thread_time()
        drain(self)
        drains[0] += time.thread_time() - started

    sqlite.SQLiteStore._connection = wrapped_connection  # type: ignore[method-assign]
    sqlite.SQLiteStore._drain = timed_drain  # type: ignore[method-assign]
    samples: dict[str, list[float]] = {"process": [], "loop_thread": [], "store_thread": [], "sqlite_statements": []}
    with tempfile.TemporaryDirectory(prefix="cnop-order-profile-") as folder:
        app, call, tokens = await setup(folder, 16)
        async with app.router.lifespan_context(app):
            run = rounds(call, tokens)["market buy+sell"]
            await measure(run, max(50, count // 4), 16)
            for attempt in range(attempts):
                spent.clear()
                counts.clear()
                drains[0] = 0.0
                timed[0].on = True
                process, loop = time.process_time(), time.thread_time()
                await measure(run, count, 16)
                process, loop = time.process_time() - process, time.thread_time() - loop
                timed[0].on = False
                orders = 2 * count
                samples["process"].append(process / orders * 1e6)
                samples["loop_thread"].append(loop / orders * 1e6)
                samples["store_thread"].append(drains[0] / orders * 1e6)
                samples["sqlite_statements"].append(sum(spent.values()) / orders / 1000)
                print(f"attempt {attempt}: " + ", ".join(f"{k} {v[-1]:.0f} µs" for k, v in samples.items()), flush=True)
    orders = 2 * count
    statements = {
        kind: {"us_per_order": round(ns / orders / 1000, 1), "per_order": round(counts[kind] / orders, 2)}
        for kind, ns in spent.most_common()
    }
    return {
        "rounds": count,
        "attempts": attempts,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "cpu_us_per_order_median": {name: round(statistics.median(v), 1) for name, v in samples.items()},
        "cpu_us_per_order": samples,
        "sqlite_statements_last_attempt": statements,
    }


def main() -> int:
    report = asyncio.run(main_async())
    out = Path(os.environ.get("ORDER_PROFILE_OUT", str(RESULTS)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, us in report["cpu_us_per_order_median"].items():
        print(f"{name:<18} {us:8.1f} µs CPU per order")
    for kind, figures in report["sqlite_statements_last_attempt"].items():
        print(f"  {kind:<24} {figures['us_per_order']:7.1f} µs per order ({figures['per_order']} per order)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
