"""The SQLite store of this tree against the one of another checkout, A/B in one process.

    .venv/bin/python -m benchmarks.store_ab --base ../cnop-before [--ops 1000] [--reads 2000]
                                            [--attempts 9] [--levels 1,16]

For a change to the storage port or the engine itself: `--base` is a checkout of the revision
before (e.g. `git worktree add --detach ../cnop-before main`). Its `src/cnop` is copied into a
temporary folder under the name `cnop_base`, with its imports renamed, so both versions load
side by side in one interpreter. The same transactions (`store_bench`'s market-order and
withdrawal shapes, on 64 users), a point read and a 20-item query then run against a store of
each version, each on its own SQLite file, alternating which goes first every attempt. Reported
per measurement: the median process CPU time (both threads) per operation of each version, and
the median and range of the per-attempt ratios new ÷ base. The ops are built before the clock
starts. Nothing is written to `results/`: the figures belong with the change they measure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import store_bench
from cnop.common.database import keys


def load_base(checkout: Path) -> tuple[ModuleType, ModuleType]:
    """(sqlite engine, store port) of the checkout, importable next to this tree's."""
    root = Path(tempfile.mkdtemp(prefix="store_ab_"))
    dest = root / "cnop_base"
    shutil.copytree(checkout / "src" / "cnop", dest)
    for path in dest.rglob("*.py"):
        text = re.sub(r"\bcnop\.", "cnop_base.", path.read_text())
        text = re.sub(r"^from cnop import", "from cnop_base import", text, flags=re.M)
        path.write_text(text)
    sys.path.insert(0, str(root))
    import cnop_base.common.database.sqlite as base_sqlite
    import cnop_base.common.database.store as base_store

    return base_sqlite, base_store


def convert(value: Any, port: ModuleType) -> Any:
    """An op (or condition) rebuilt from the classes of another version of the port."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = getattr(port, type(value).__name__)
        if type(value).__name__ in ("And", "Or"):
            return cls(*[convert(c, port) for c in value.conditions])
        return cls(**{f.name: convert(getattr(value, f.name), port) for f in dataclasses.fields(value) if f.init})
    if isinstance(value, list):
        return [convert(v, port) for v in value]
    return value


QUERY_PK = "BENCH#Q"


async def prepare(store: Any, port: ModuleType) -> None:
    await store.create_tables()
    seed = [port.Put(keys.INVENTORY, {"pk": "ASSET#BTC", "sk": "INVENTORY", "available": Decimal("1e9"),
                                      "cash": Decimal("0.00")})]  # fmt: skip
    seed += [
        port.Put(store_bench.T, {"pk": f"USER#ab{u:02d}", "sk": "BALANCE#USD", "available": Decimal("1e12")})
        for u in range(store_bench.AB_USERS)
    ]
    seed += [port.Put(store_bench.T, {"pk": QUERY_PK, "sk": f"ITEM#{i:04d}", "n": Decimal(i)}) for i in range(200)]
    for start in range(0, len(seed), 50):
        await store.transact(seed[start : start + 50])


async def cpu_per_transaction(
    store: Any, port: ModuleType, shape: str, ops: int, concurrency: int, offset: int
) -> float:
    pending = iter([convert(store_bench.AB_TRANSACTIONS[shape](n), port) for n in range(offset, offset + ops)])

    async def worker() -> None:
        for transaction in pending:
            await store.transact(transaction)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / ops * 1e6


async def cpu_per_get(store: Any, port: ModuleType, n: int) -> float:
    key = {"pk": "USER#ab01", "sk": "BALANCE#USD"}
    cpu = time.process_time()
    for _ in range(n):
        await store.get(store_bench.T, key)
    return (time.process_time() - cpu) / n * 1e6


async def cpu_per_query(store: Any, port: ModuleType, n: int) -> float:
    sk = port.SortKey.prefix("ITEM#")
    cpu = time.process_time()
    for _ in range(n):
        await store.query(store_bench.T, QUERY_PK, sk=sk, limit=20)
    return (time.process_time() - cpu) / n * 1e6


async def run(args: argparse.Namespace) -> None:
    import cnop.common.database.sqlite as new_sqlite
    import cnop.common.database.store as new_store

    base_sqlite, base_store = load_base(args.base.resolve())
    versions = {"new": (new_sqlite, new_store), "base": (base_sqlite, base_store)}
    levels = [int(x) for x in args.levels.split(",")]
    figures: dict[tuple[str, int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: engine.SQLiteStore(f"{tmp}/{name}.db") for name, (engine, _) in versions.items()}
        for name, store in stores.items():
            await prepare(store, versions[name][1])
        offset = 0
        for attempt in range(args.attempts):
            order = list(versions) if attempt % 2 == 0 else list(versions)[::-1]
            for shape in store_bench.AB_SHAPES:
                for concurrency in levels:
                    for name in order:
                        port = versions[name][1]
                        us = await cpu_per_transaction(stores[name], port, shape, args.ops, concurrency, offset)
                        figures.setdefault((f"{shape} transact", concurrency, name), []).append(us)
                        offset += args.ops
            for name in order:
                port = versions[name][1]
                figures.setdefault(("get", 1, name), []).append(await cpu_per_get(stores[name], port, args.reads))
                figures.setdefault(("query, 20 items", 1, name), []).append(
                    await cpu_per_query(stores[name], port, args.reads // 4)
                )
        for store in stores.values():
            await store.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.attempts} attempts, {args.ops} transactions / {args.reads} reads each; load average {load}")
    print("| what | concurrency | base CPU µs/op | new CPU µs/op | new ÷ base: median (range) |")
    print("|---|---:|---:|---:|---:|")
    for what, concurrency in sorted({(w, c) for w, c, _ in figures}):
        base, new = figures[(what, concurrency, "base")], figures[(what, concurrency, "new")]
        ratios = [n / b for n, b in zip(new, base, strict=True)]
        print(
            f"| {what} | {concurrency} | {statistics.median(base):.1f} | {statistics.median(new):.1f} |"
            f" {statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the revision to compare against")
    parser.add_argument("--ops", type=int, default=1000, help="transactions per measurement")
    parser.add_argument("--reads", type=int, default=2000, help="point reads per measurement (a quarter as queries)")
    parser.add_argument("--attempts", type=int, default=9, help="alternating attempts")
    parser.add_argument("--levels", default="1,16", help="comma-separated concurrency levels")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
