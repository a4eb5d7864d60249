"""`make soak`: hold a fixed request rate against `cnop serve` and check that nothing grows.

One `cnop serve` on 127.0.0.1 (a fresh SQLite store in a temporary folder, simulated prices), a
fixed-rate open-loop client in this process: every 1/`SOAK_RATE` seconds a request starts,
whatever the previous ones are doing (at most `SOAK_MAX_IN_FLIGHT` at once), a mix of reads,
deposits, withdrawals, market orders and resting orders that are cancelled again. The run lasts
`SOAK_SECONDS` (default 300); every `SOAK_WINDOW_SECONDS` it samples the server's resident memory
(VmRSS), its open file descriptors and the window's p99 latency.

The bound, checked between the first window after the warm-up and the last one:
- RSS grows by at most `SOAK_MAX_RSS_GROWTH_MB` (default 40 MB);
- open files (descriptors that are not sockets) grow by at most `SOAK_MAX_FD_GROWTH` (default 16),
  and sockets stay within the client's connections (`SOAK_MAX_IN_FLIGHT`) plus the listener;
- p99 at the end is at most `SOAK_MAX_P99_RATIO` (default 2.0) times p99 at the start, + 20 ms;
- no 5xx, no client error other than a business refusal, and `cnop audit` passes afterwards.

Exit 0 when the bound held, 1 when not. Results go to stdout and `benchmarks/results/soak.md`.
All traffic goes to 127.0.0.1; the server is stopped on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
RATE = float(os.environ.get("SOAK_RATE", "25"))
WINDOW = float(os.environ.get("SOAK_WINDOW_SECONDS", "15"))
WARMUP = float(os.environ.get("SOAK_WARMUP_SECONDS", "60"))
USERS = int(os.environ.get("SOAK_USERS", "20"))
MAX_IN_FLIGHT = int(os.environ.get("SOAK_MAX_IN_FLIGHT", "64"))
MAX_RSS_GROWTH_MB = float(os.environ.get("SOAK_MAX_RSS_GROWTH_MB", "40"))
MAX_FD_GROWTH = int(os.environ.get("SOAK_MAX_FD_GROWTH", "16"))
MAX_P99_RATIO = float(os.environ.get("SOAK_MAX_P99_RATIO", "2.0"))
PASSWORD = "Str0ng!Passw0rd"
RESULTS = Path(__file__).parent / "results" / "soak.md"


@dataclass
class Window:
    started: float
    rss_mb: float = 0.0
    fds: int = 0
    sockets: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> tuple[int, int]:
    """(file descriptors that are not sockets, sockets): a leak shows in the first; the second
    follows the client's open connections, at most `SOAK_MAX_IN_FLIGHT` plus the listener."""
    files = sockets = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:"):
            sockets += 1
        else:
            files += 1
    return files, sockets


def server_env(store: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "CNOP_STORE": store,
        "CNOP_JWT_SECRET": secrets.token_urlsafe(48),
        "CNOP_LOG_LEVEL": "WARNING",
        "CNOP_PRICE_SOURCE": "simulated",
        "CNOP_RATE_LIMIT_PER_IP": "100000000/minute",
        "CNOP_RATE_LIMIT_PER_USER": "100000000/minute",
        "CNOP_DAILY_DEPOSIT_LIMIT": "1000000000",
        "CNOP_DAILY_WITHDRAW_LIMIT": "1000000000",
    }


async def set_up(client: httpx.AsyncClient) -> list[dict[str, str]]:
    users = []
    for n in range(USERS):
        name = f"soak_{n:03d}_{uuid.uuid4().hex[:6]}"
        body = {
            "username": name,
            "email": f"{name}@example.com",
            "password": PASSWORD,
            "first_name": "Soak",
            "last_name": "Test",
        }
        assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
        r = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = await client.post("/api/v1/balance/deposit", json={"amount": "100000"}, headers=headers)
        assert r.status_code == 201, r.text
        users.append(headers)
    return users


async def one_request(client: httpx.AsyncClient, rng: random.Random, headers: dict[str, str]) -> int:
    roll = rng.random()
    if roll < 0.45:
        path = rng.choice(["/api/v1/balance", "/api/v1/portfolio", "/api/v1/orders", "/api/v1/inventory/assets"])
        return (await client.get(path, headers=headers)).status_code
    if roll < 0.6:
        return (await client.post("/api/v1/balance/deposit", json={"amount": "5.00"}, headers=headers)).status_code
    if roll < 0.7:
        extra = {"Idempotency-Key": uuid.uuid4().hex}
        r = await client.post("/api/v1/balance/withdraw", json={"amount": "4.00"}, headers={**headers, **extra})
        return r.status_code
    if roll < 0.9:
        side = rng.choice(["market_buy", "market_sell"])
        body = {"order_type": side, "asset_id": "ETH", "quantity": "0.001"}
        return (await client.post("/api/v1/orders", json=body, headers=headers)).status_code
    body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.0001", "price": "1000"}
    r = await client.post("/api/v1/orders", json=body, headers=headers)
    if r.status_code == 201:
        r = await client.delete(f"/api/v1/orders/{r.json()['data']['order_id']}", headers=headers)
    return r.status_code


async def soak(base: str, pid: int) -> tuple[list[Window], Counter[int]]:
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        users = await set_up(client)
        rng = random.Random(42)
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        windows: list[Window] = []
        window = Window(time.monotonic())  # windows start once the users exist
        tasks: set[asyncio.Task[None]] = set()

        async def fire(target: Window) -> None:
            async with in_flight:
                started = time.perf_counter()
                try:
                    status = await one_request(client, rng, rng.choice(users))
                except httpx.HTTPError as exc:
                    status = 0
                    errors[type(exc).__name__] += 1
                target.latencies.append(time.perf_counter() - started)
                statuses[status] += 1

        begin = time.monotonic()
        next_start = begin
        while time.monotonic() - begin < SECONDS:
            now = time.monotonic()
            if now - window.started >= WINDOW:
                window.rss_mb = rss_mb(pid)
                window.fds, window.sockets = open_fds(pid)
                windows.append(window)
                print(
                    f"t={now - begin:5.0f}s rss={window.rss_mb:6.1f} MB fds={window.fds:3d}"
                    f" sockets={window.sockets:3d} p99={window.p99_ms:7.1f} ms requests={len(window.latencies)}",
                    flush=True,
                )
                window = Window(now)
            if now >= next_start:
                task = asyncio.create_task(fire(window))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_start += 1 / RATE
            await asyncio.sleep(max(0.0, min(next_start - time.monotonic(), 0.01)))
        await asyncio.gather(*tasks)
    if errors:
        print(f"transport errors: {dict(errors)}")
    return windows, statuses


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cnop-soak-") as tmp:
        store = f"sqlite:///{tmp}/soak.db"
        env = server_env(store)
        port = free_port()
        cnop = str(Path(sys.executable).with_name("cnop"))
        log = Path(tmp, "server.log").open("wb")  # noqa: SIM115 (closed in the finally below)
        command = [cnop, "serve", "--host", "127.0.0.1", "--port", str(port)]
        server = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    print("cnop serve did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            windows, statuses = asyncio.run(soak(base, server.pid))
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        audit = subprocess.run(
            [cnop, "audit", "--store", store], cwd=tmp, env=env, capture_output=True, text=True, check=False
        )
    return report(windows, statuses, audit.returncode == 0)


def report(windows: list[Window], statuses: Counter[int], audit_ok: bool) -> int:
    measured = [w for w in windows if w.started - windows[0].started >= WARMUP] or windows
    first, last = measured[0], measured[-1]
    rss_growth = last.rss_mb - first.rss_mb
    fd_growth = last.fds - first.fds
    p99_bound = first.p99_ms * MAX_P99_RATIO + 20
    bad = {s: n for s, n in statuses.items() if s >= 500 or s == 0 or s in (400, 401, 403, 404, 429)}
    checks = {
        f"RSS growth {rss_growth:+.1f} MB <= {MAX_RSS_GROWTH_MB:.0f} MB": rss_growth <= MAX_RSS_GROWTH_MB,
        f"open files (not sockets) growth {fd_growth:+d} <= {MAX_FD_GROWTH}": fd_growth <= MAX_FD_GROWTH,
        f"sockets at end {last.sockets} <= {MAX_IN_FLIGHT + 4} (client connections + listener)": last.sockets
        <= MAX_IN_FLIGHT + 4,
        f"p99 at end {last.p99_ms:.1f} ms <= {p99_bound:.1f} ms": last.p99_ms <= p99_bound,
        f"no 5xx, transport or client errors ({bad or 'none'})": not bad,
        "cnop audit passed": audit_ok,
    }
    sent = sum(statuses.values())
    lines = [
        f"{SECONDS:.0f} s at {RATE:.0f} requests/s ({sent} requests, statuses {dict(sorted(statuses.items()))}),"
        f" {USERS} users, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| window | RSS MB | open files | sockets | p99 ms | requests |",
        "|---|---:|---:|---:|---:|---:|",
        f"| start (first after {WARMUP:.0f} s warm-up) | {first.rss_mb:.1f} | {first.fds} | {first.sockets}"
        f" | {first.p99_ms:.1f} | {len(first.latencies)} |",
        f"| end | {last.rss_mb:.1f} | {last.fds} | {last.sockets} | {last.p99_ms:.1f} | {len(last.latencies)} |",
        "",
        *(f"- {'ok  ' if ok else 'FAIL'} {name}" for name, ok in checks.items()),
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Soak (`make soak`)\n\n{text}\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
