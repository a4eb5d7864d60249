"""The gateway hop's cost: the same reads and market orders against the local shape (one process)
and through the cloud shape's gateway (gateway → service over pooled HTTP), on this machine.

    .venv/bin/python -m benchmarks.gateway_hop            # HOP_REQUESTS=300 HOP_CONCURRENCY=8

Both shapes use one SQLite file each and simulated prices (no DynamoDB, no Redis), so what
differs is the hop: the gateway's edge work, the proxy and a second HTTP exchange on 127.0.0.1.
Sequential requests give the latency a hop adds; concurrent ones give throughput. Writes
`benchmarks/results/gateway_hop.md`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from cnop.dev import CloudOnOneMachine, free_base_port

REQUESTS = int(os.environ.get("HOP_REQUESTS", "300"))
CONCURRENCY = int(os.environ.get("HOP_CONCURRENCY", "8"))
PASSWORD = "Str0ng!Passw0rd"
RESULTS = Path(__file__).parent / "results" / "gateway_hop.md"
ENV = {"CNOP_RATE_LIMIT_PER_IP": "1000000/minute", "CNOP_RATE_LIMIT_PER_USER": "1000000/minute",
       "CNOP_LOG_LEVEL": "WARNING", "CNOP_TRIGGER_ENGINE": "false"}  # fmt: skip


def _user(client: httpx2.Client) -> dict[str, str]:
    name = f"hop_{uuid.uuid4().hex[:10]}"
    body = {
        "username": name,
        "email": f"{name}@example.com",
        "password": PASSWORD,
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    token = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/balance/deposit", json={"amount": "9000"}, headers=headers).status_code == 201
    return headers


def _repeat(call: Callable[[httpx2.Client], int], times: int) -> Callable[[httpx2.Client], list[int]]:
    return lambda client: [call(client) for _ in range(times)]


def _measure(base_url: str) -> dict[str, tuple[float, float, float]]:
    """Per scenario: (p50 ms sequential, p99 ms sequential, requests/s with CONCURRENCY clients)."""
    results = {}
    with httpx2.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        headers = _user(client)
        order = {"order_type": "market_buy", "asset_id": "DOGE", "quantity": "1"}
        scenarios: dict[str, Callable[[httpx2.Client], int]] = {
            "read (GET asset)": lambda c: c.get("/api/v1/inventory/assets/BTC").status_code,
            "read (GET balance)": lambda c: c.get("/api/v1/balance", headers=headers).status_code,
            "market order": lambda c: c.post("/api/v1/orders", headers=headers, json=order).status_code,
        }
        for name, call in scenarios.items():
            for _ in range(20):
                call(client)  # warm-up
            times = []
            for _ in range(REQUESTS):
                started = time.perf_counter()
                status = call(client)
                times.append((time.perf_counter() - started) * 1000)
                assert status < 500, (name, status)
            times.sort()
            clients = [httpx2.Client(base_url=base_url, timeout=30, trust_env=False) for _ in range(CONCURRENCY)]
            per_client = max(1, REQUESTS // CONCURRENCY)
            started = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(_repeat(call, per_client), clients))
            rps = per_client * CONCURRENCY / (time.perf_counter() - started)
            for c in clients:
                c.close()
            results[name] = (statistics.median(times), times[int(len(times) * 0.99) - 1], rps)
    return results


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cnop-hop-") as tmp:
        work = Path(tmp)
        port = free_base_port()
        local = subprocess.Popen(
            [sys.executable, "-m", "cnop", "serve", "--port", str(port + 40), "--store", f"sqlite:///{work}/local.db"],
            env={**os.environ, **ENV, "CNOP_JWT_SECRET": "x" * 64},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                try:
                    if httpx2.get(f"http://127.0.0.1:{port + 40}/health/ready", trust_env=False).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                time.sleep(0.2)
            local_results = _measure(f"http://127.0.0.1:{port + 40}")
        finally:
            local.terminate()
            local.wait(timeout=30)
        with CloudOnOneMachine(work / "cloud", f"sqlite:///{work / 'cloud.db'}", port, 1, 0, None, ENV) as cloud:
            cloud_results = _measure(cloud.gateway_urls()[0])
    lines = [
        "# Gateway hop: local shape vs cloud shape (through one gateway)",
        "",
        f"`python -m benchmarks.gateway_hop`, {REQUESTS} sequential requests per scenario (p50/p99) and "
        f"{CONCURRENCY} concurrent clients (req/s), SQLite, simulated prices, all on this machine "
        f"({os.cpu_count()} cores, shared with whatever else runs).",
        "",
        "| scenario | local p50 ms | cloud p50 ms | hop p50 ms | local p99 ms | cloud p99 ms "
        "| local req/s | cloud req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (lp50, lp99, lrps) in local_results.items():
        cp50, cp99, crps = cloud_results[name]
        lines.append(
            f"| {name} | {lp50:.2f} | {cp50:.2f} | {cp50 - lp50:+.2f} | {lp99:.2f} | {cp99:.2f} "
            f"| {lrps:.0f} | {crps:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
