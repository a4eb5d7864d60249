"""What SQLite's durability setting costs: deposit-shaped transactions under each `synchronous` mode.

`make bench-durability` (or `.venv/bin/python -m benchmarks.sqlite_durability`). Each mode gets
a fresh file in a temporary folder (on the same disk as the system's temp dir; set TMPDIR to
measure another disk) in WAL mode, then commits `DURABILITY_TRANSACTIONS` transactions of the
deposit's shape (a guarded balance update, a new ledger entry, a daily counter, an idempotency
record): first one after another, then from `DURABILITY_CONCURRENCY` tasks at once (one
connection per store, as the server uses it). Reports transactions per second and the p50/p99
commit latency, and writes `benchmarks/results/sqlite_durability.md`.

- OFF: no fsync at all (a reference point only; a crash of the OS can corrupt the file).
- NORMAL (the default): the WAL is fsynced at checkpoints, not at every commit; a killed
  process loses nothing committed, a power cut can lose the last commits, never corrupt the file.
- FULL: the WAL is fsynced at every commit; a power cut loses nothing committed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Ge, NotExists, Put, Update

MODES = ("OFF", "NORMAL", "FULL")
TRANSACTIONS = int(os.environ.get("DURABILITY_TRANSACTIONS", "2000"))
CONCURRENCY = int(os.environ.get("DURABILITY_CONCURRENCY", "8"))
RESULTS = Path(__file__).parent / "results" / "sqlite_durability.md"


def deposit_ops(user: str, n: int) -> list[object]:
    txn = uuid.uuid4().hex
    return [
        Put(keys.USERS, {**keys.ledger_key(user, f"{n:08d}{txn}"), "amount": Decimal("1.00")}, NotExists()),
        Update(keys.USERS, keys.balance_key(user), add={"available": Decimal("1.00")}, condition=Ge("available", 0)),
        Update(keys.USERS, keys.daily_limit_key(user, "deposit", "2026-01-01"), add={"total": Decimal("1.00")}),
        Put(keys.USERS, {**keys.idempotency_key(user, "deposit", txn), "status": "applied"}, NotExists()),
    ]


async def measure(mode: str, folder: Path) -> dict[str, float]:
    store = SQLiteStore(str(folder / f"{mode.lower()}.db"), synchronous=mode)
    await store.create_tables()
    for user in range(CONCURRENCY):
        await store.transact([Put(keys.USERS, {**keys.balance_key(f"u{user}"), "available": Decimal(0)})])
    latencies: list[float] = []

    async def run(user: str, count: int) -> None:
        for n in range(count):
            started = time.perf_counter()
            await store.transact(deposit_ops(user, n))  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await run("u0", TRANSACTIONS)
    serial_seconds = time.perf_counter() - started
    serial = sorted(latencies)
    latencies.clear()
    started = time.perf_counter()
    await asyncio.gather(*(run(f"u{u}", TRANSACTIONS // CONCURRENCY) for u in range(CONCURRENCY)))
    concurrent_seconds = time.perf_counter() - started
    concurrent = sorted(latencies)
    await store.close()
    return {
        "serial_tps": TRANSACTIONS / serial_seconds,
        "serial_p50_ms": statistics.median(serial) * 1000,
        "serial_p99_ms": serial[int(len(serial) * 0.99) - 1] * 1000,
        "concurrent_tps": len(concurrent) / concurrent_seconds,
        "concurrent_p99_ms": concurrent[int(len(concurrent) * 0.99) - 1] * 1000,
    }


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cnop-durability-") as tmp:
        folder = Path(tmp)
        results = {mode: await measure(mode, folder) for mode in MODES}
        device = os.stat(folder).st_dev
    header = (
        "| synchronous | tx/s one by one | p50 ms | p99 ms | tx/s, "
        f"{CONCURRENCY} tasks | p99 ms | tx/s × NORMAL |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {mode} | {r['serial_tps']:.0f} | {r['serial_p50_ms']:.2f} | {r['serial_p99_ms']:.2f} |"
        f" {r['concurrent_tps']:.0f} | {r['concurrent_p99_ms']:.2f} |"
        f" {r['serial_tps'] / results['NORMAL']['serial_tps']:.2f} |"
        for mode, r in results.items()
    ]
    table = "\n".join([header, *rows])
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        f"# SQLite durability: cost of each `synchronous` mode\n\n"
        f"`.venv/bin/python -m benchmarks.sqlite_durability`, {TRANSACTIONS} deposit-shaped transactions"
        f" (4 ops) per mode, WAL, temp folder on device {device} ({tempfile.gettempdir()}), {os.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{table}\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
