"""Market-order throughput: one local process without Redis vs two API processes sharing Redis.

    .venv/bin/python -m benchmarks.fleet_bench        # FLEET_SECONDS=15 FLEET_CLIENTS=8 FLEET_ROUNDS=2

Two set-ups on this machine, measured alternately in one run (A, B, A, B, ...; the best window of
each is reported, as the machine is shared):

- **local**: one `cnop serve` (the local shape: in-process prices, events, counters), one SQLite file;
- **fleet**: two `cnop serve` API processes with `CNOP_TRIGGER_ENGINE=false` and one
  `cnop serve worker`, one SQLite file and one redis-server (`tests.support.fleet.Fleet`): every
  order goes through the shared rate-limit counters and its events through the Redis stream.

`FLEET_CLIENTS` threads, each with its own user, place market buys back to back for
`FLEET_SECONDS`; the fleet's clients alternate between the two API processes. Reported: orders/s
(201s), p50 and p99 latency, and any other status. Both set-ups use the same store engine and the
same machine (2 cores, shared by everything else running: figures move with the load; compare
within one run). Writes `benchmarks/results/fleet.json` and `fleet.md`; exit 1 on any 5xx or a
failed `cnop audit`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from tests.support.fleet import Fleet, register
from tests.support.fleet import login as fleet_login
from tests.support.redis_server import RedisServer

SECONDS = float(os.environ.get("FLEET_SECONDS", "15"))
CLIENTS = int(os.environ.get("FLEET_CLIENTS", "8"))
ROUNDS = int(os.environ.get("FLEET_ROUNDS", "2"))
RESULTS = Path(__file__).parent / "results"
ENV = {
    "CNOP_RATE_LIMIT_PER_IP": "100000000/minute",
    "CNOP_RATE_LIMIT_PER_USER": "100000000/minute",
    "CNOP_LOG_LEVEL": "WARNING",
    "CNOP_LOG_JSON": "true",
    "CNOP_PASSWORD_HASH_WORKERS": "1",
}
ORDER = {"order_type": "market_buy", "asset_id": "DOGE", "quantity": "1"}


@contextmanager
def local_shape(workdir: Path) -> Iterator[list[str]]:
    """One `cnop serve` on a SQLite file, no Redis; yields its URL (as a list, like the fleet's)."""
    from tests.support.cnop_server import cnop_serve

    env = {**ENV, "CNOP_JWT_SECRET": "fleet-bench-secret-that-is-long-enough-0123456789"}
    with cnop_serve(workdir, **env) as server:
        yield [server.url]


@contextmanager
def fleet_shape(workdir: Path) -> Iterator[list[str]]:
    with RedisServer.start() as redis:
        fleet = Fleet(workdir, f"sqlite:///{workdir / 'fleet.db'}", redis.url, apis=2, workers=1, extra_env=ENV)
        with fleet:
            yield fleet.api_urls()
            audit = fleet.cnop("audit", check=False)
            if audit.returncode != 0:
                raise SystemExit(f"cnop audit failed:\n{audit.stdout.decode()}{audit.stderr.decode()}")


def _users(urls: list[str]) -> list[dict[str, str]]:
    users = []
    with httpx2.Client(base_url=urls[0], timeout=60, trust_env=False) as http:
        for _ in range(CLIENTS):
            name = f"bench_{uuid.uuid4().hex[:10]}"
            register(http, name)
            auth = fleet_login(http, name)
            r = http.post("/api/v1/balance/deposit", json={"amount": "10000"}, headers=auth)
            assert r.status_code == 201, r.text
            users.append(auth)
    return users


def _window(urls: list[str], users: list[dict[str, str]]) -> dict[str, Any]:
    """Every client places market buys for SECONDS; orders/s, latency, statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(len(users) + 1)
    deadline = [0.0]

    def run(index: int, auth: dict[str, str]) -> None:
        clients = [httpx2.Client(base_url=url, timeout=60, trust_env=False) for url in urls]
        mine: list[float] = []
        seen: dict[int, int] = {}
        try:
            for http in clients:  # connect (and warm) before the window opens
                http.get("/health")
            start.wait()
            sent = index
            while time.monotonic() < deadline[0]:
                http = clients[sent % len(clients)]
                began = time.perf_counter()
                status = http.post("/api/v1/orders", json=ORDER, headers=auth).status_code
                if status == 201:
                    mine.append(time.perf_counter() - began)
                seen[status] = seen.get(status, 0) + 1
                sent += 1
        finally:
            for http in clients:
                http.close()
            with lock:
                latencies.extend(mine)
                for status, count in seen.items():
                    statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=run, args=(i, auth)) for i, auth in enumerate(users)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + SECONDS
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "orders_per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> int:
    windows: dict[str, list[dict[str, Any]]] = {"local": [], "fleet": []}
    with tempfile.TemporaryDirectory(prefix="cnop-fleet-bench-") as tmp:
        work = Path(tmp)
        (work / "local").mkdir()
        with local_shape(work / "local") as local_urls, fleet_shape(work / "fleet") as fleet_urls:
            users = {"local": _users(local_urls), "fleet": _users(fleet_urls)}
            urls = {"local": local_urls, "fleet": fleet_urls}
            for _ in range(ROUNDS):
                for name in ("local", "fleet"):
                    windows[name].append(_window(urls[name], users[name]))
                    print(name, json.dumps(windows[name][-1]), flush=True)
    best = {name: max(runs, key=lambda w: w["orders_per_second"]) for name, runs in windows.items()}
    failures = sum(v for runs in windows.values() for w in runs for k, v in w["statuses"].items() if k.startswith("5"))
    report = {
        "command": "python -m benchmarks.fleet_bench",
        "seconds": SECONDS,
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "windows": windows,
        "best": best,
        "fleet_vs_local": best["fleet"]["orders_per_second"] / best["local"]["orders_per_second"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Market orders: one local process vs two API processes sharing Redis",
        "",
        f"`python -m benchmarks.fleet_bench`: {CLIENTS} clients, {SECONDS:g} s windows, {ROUNDS} rounds "
        f"alternating, best window each; SQLite; {os.cpu_count()} cores shared with everything else "
        f"(load average at the end {os.getloadavg()[0]:.1f}).",
        "",
        "| set-up | orders/s | p50 ms | p99 ms | statuses |",
        "|---|---:|---:|---:|---|",
    ]
    for name, window in best.items():
        lines.append(
            f"| {name} | {window['orders_per_second']:.1f} | {window['p50_ms']:.1f} | {window['p99_ms']:.1f} "
            f"| {window['statuses']} |"
        )
    lines += ["", f"fleet ÷ local: {report['fleet_vs_local']:.2f}"]
    (RESULTS / "fleet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
