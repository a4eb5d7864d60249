"""The benchmark suite: `python -m benchmarks.run` (see benchmarks/README.md).

Starts the system under uvicorn (uvloop, httptools, one worker) pinned to core 0 with the embedded
SQLite store in a temporary folder, prepares users, funds and tokens over HTTP outside the measured
window, then drives each scenario with `wrk -t1` pinned to core 1 and the Lua scripts in
`benchmarks/lua/`. Every scenario is reported next to a baseline (a bare FastAPI app served the
same way). After the run it reads the server's RSS, stops it and runs `cnop audit` on the store.

Environment:
    BENCH_SECONDS          measured seconds per scenario (default 20)
    BENCH_SCENARIOS        comma list of scenarios to run (default: all, in the order below)
    BENCH_CONNECTIONS      wrk connections per scenario (default 64; contention always uses 64)
    BENCH_USERS            users for market_orders, reads and resting_orders (default 200)
    BENCH_WARMUP_SECONDS   unmeasured wrk run before each scenario (default 2; 0 to skip)
    BENCH_ATTEMPTS         measured windows per scenario at most, when other processes disturb core 0
                           (default 2; the least disturbed window is reported)
    BENCH_KEEP_STORE       1 to keep the temporary folder (store and server logs) afterwards
    BENCH_PYSPY            path to a py-spy binary: record each scenario's first measured window
                           (GIL samples, speedscope) into benchmarks/results/tmp/ (git-ignored)

Exit status: 0 when every selected scenario ran, no response was a 5xx and the audit passed;
1 otherwise; 2 when the tools are missing or the environment is wrong. Targets (ratios to the
baseline, RSS) are reported, not enforced.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"

SCENARIOS = ("baseline", "market_orders", "contention", "reads", "resting_orders")
DESCRIPTIONS = {
    "baseline": "bare FastAPI app: parse the order body with pydantic, return it",
    "market_orders": "many users, small market buys and sells mixed",
    "contention": "ONE user, every connection: deposit, buy, withdraw, sell",
    "reads": "GET health, profile, asset list, balance, portfolio",
    "resting_orders": "limit buy far below the market, then cancel it",
}
CONTENTION_CONNECTIONS = 64
DISTURBED = 0.1  # share of core 0 other processes may take before a result is flagged as disturbed
SERVER_CORE = "0"
CLIENT_CORE = "1"
HOST = "127.0.0.1"
PASSWORD = "Bench-Pass-2026!"  # meets the strength rules; the store is thrown away after the run

# Order sizes: small enough that a 20 s window never exhausts a user's cash or the house stock.
MARKET_ASSETS = ({"id": "BTC", "qty": "0.0001"}, {"id": "ETH", "qty": "0.001"}, {"id": "SOL", "qty": "0.05"})
PREBUY_ROUNDS = 20  # each user starts holding 20 orders' worth of every asset, so sells never lack units
USER_DEPOSIT = "20000.00"
CONTENTION = {"asset": "BTC", "qty": "0.0002", "amount": "25.00", "deposit": "50000.00", "prebuy": "0.05"}
RESTING = {"asset": "BTC", "qty": "0.001", "price": "1000.00"}  # ~1/67 of the market: never fills

# Targets from the issue (performance: a market order in under a millisecond of CPU); reported,
# not enforced. CPU ms per request is the server's CPU seconds over a window divided by the requests
# it answered, the median over the scenario's measured windows.
TARGETS = (
    ("market_orders rps >= 0.35 x baseline", "market_orders", "rps_ratio", ">=", 0.35),
    ("market_orders server CPU <= 1 ms per order", "market_orders", "server_cpu_ms", "<=", 1.0),
    ("market_orders p99 <= 10 x baseline p99", "market_orders", "p99_ratio", "<=", 10.0),
    ("contention rps >= 0.25 x baseline", "contention", "rps_ratio", ">=", 0.25),
    ("contention: zero 5xx", "contention", "server_errors", "<=", 0),
    ("reads rps >= 0.6 x baseline", "reads", "rps_ratio", ">=", 0.6),
    ("resting_orders rps >= 0.3 x baseline", "resting_orders", "rps_ratio", ">=", 0.3),
    ("server RSS <= 120 MB", None, "rss_mb", "<=", 120.0),
    ("audit passes", None, "audit_ok", "==", True),
)


class BenchError(Exception):
    """A step of the run failed; the message says which and why."""


class UsageError(Exception):
    """The run cannot start: bad settings or missing tools."""


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    seconds: int
    scenarios: tuple[str, ...]
    connections: int
    users: int
    warmup: int
    attempts: int
    keep_store: bool
    pyspy: str | None = None

    @classmethod
    def from_env(cls) -> Config:
        names = tuple(s.strip() for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s.strip())
        unknown = [name for name in names if name not in SCENARIOS]
        if unknown:
            raise UsageError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return cls(
            seconds=_env_int("BENCH_SECONDS", 20, 1),
            scenarios=tuple(name for name in SCENARIOS if not names or name in names),
            connections=_env_int("BENCH_CONNECTIONS", 64, 1),
            users=_env_int("BENCH_USERS", 200, 1),
            warmup=_env_int("BENCH_WARMUP_SECONDS", 2, 0),
            attempts=_env_int("BENCH_ATTEMPTS", 2, 1),
            keep_store=os.environ.get("BENCH_KEEP_STORE", "") not in ("", "0"),
            pyspy=_pyspy(os.environ.get("BENCH_PYSPY", "").strip()),
        )


def _pyspy(path: str) -> str | None:
    if not path:
        return None
    found = shutil.which(path)
    if found is None:
        raise UsageError(f"BENCH_PYSPY={path} is not an executable py-spy")
    return found


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}")
    return value


def check_tools() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: run scripts/install-bench-tools.sh")
    if (os.cpu_count() or 1) < 2:
        raise UsageError("needs 2 cores: the server is pinned to core 0 and wrk to core 1")


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _proc_status(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of the process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_busy_seconds(core: str) -> tuple[float, float]:
    """Busy and stolen seconds of one core so far (/proc/stat), to see what else ran on it."""
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / tick, steal / tick
    return 0.0, 0.0


def _describe_log_line(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return line[:200]
    where = f"{record.get('method', '')} {record.get('path', '')}".strip()
    exceptions = record.get("exception") or [{}]
    what = f"{exceptions[0].get('exc_type', '')}: {exceptions[0].get('exc_value', '')}".strip(": ")
    return f"{where}: {what or record.get('event', '?')}"[:300]


SYSTEM_FACTORY = "cnop.gateway.app:create_default_app"


class Server:
    """One uvicorn process (`--loop uvloop --http httptools --workers 1`) started under `taskset -c 0`."""

    def __init__(self, name: str, factory: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.factory = factory
        self.env = env
        self.workdir = workdir
        self.port = 0
        self.log_path = workdir / f"{name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.port = free_port()
        if self.factory == SYSTEM_FACTORY:
            # The system runs as `cnop serve` runs it: uvloop, and the server layer's limits
            # (gateway/server.py) on top of uvicorn's httptools protocol.
            command = [
                "taskset", "-c", SERVER_CORE,
                str(Path(sys.executable).with_name("cnop")), "serve", "--host", HOST, "--port", str(self.port),
            ]  # fmt: skip
        else:
            command = [
                "taskset", "-c", SERVER_CORE,
                sys.executable, "-m", "uvicorn", "--factory", self.factory,
                "--host", HOST, "--port", str(self.port),
                "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                "--no-access-log", "--log-level", "warning",
            ]  # fmt: skip
        with self.log_path.open("wb") as log:
            # cwd is the temporary folder, so no developer's .env leaks into the settings.
            self.process = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log, stderr=log)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = http(self.url, "GET", "/health", timeout=2)
                if status == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"{self.name} server did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")

    def pin(self, cores: str) -> None:
        """Set the CPU affinity of every thread of the server (taskset -a -p)."""
        subprocess.run(["taskset", "-a", "-p", "-c", cores, str(self.pid)], check=True, capture_output=True)

    def threads_pinned_to(self, core: str) -> bool:
        for status in Path(f"/proc/{self.pid}/task").glob("*/status"):
            match = re.search(r"^Cpus_allowed_list:\s+(\S+)", status.read_text(), re.MULTILINE)
            if match is None or match.group(1) != core:
                return False
        return True

    def single_process(self) -> bool:
        """uvicorn serves in this process itself (no worker children that would hide the real RSS)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return not children.exists() or not children.read_text().strip()

    def rss_mb(self) -> tuple[float | None, float | None]:
        rss, hwm = _proc_status(self.pid, "VmRSS"), _proc_status(self.pid, "VmHWM")
        return (None if rss is None else round(rss / 1024, 1), None if hwm is None else round(hwm / 1024, 1))

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_errors(self) -> int:
        """Lines the server logged at error level or above (unhandled exceptions, failed checks)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r'"level":\s*"(?:error|critical|exception)"|^ERROR', text, re.MULTILINE))

    def log_error_summary(self) -> dict[str, int]:
        """Error lines of the server log grouped by what failed (`POST /path: StoreError: message`)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        wanted = re.compile(r'"level":\s*"(?:error|critical|exception)"|^ERROR')
        summary: dict[str, int] = {}
        for line in lines:
            if wanted.search(line):
                key = _describe_log_line(line)
                summary[key] = summary.get(key, 0) + 1
        return summary

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def server_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without inherited CNOP_ settings, plus `extra`.

    `BENCH_SERVER_ENV="CNOP_A=1,CNOP_B=x"` adds settings to the system under test, for A/B runs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNOP_") and k != "WEB_CONCURRENCY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    for pair in filter(None, (p.strip() for p in os.environ.get("BENCH_SERVER_ENV", "").split(","))):
        name, _, value = pair.partition("=")
        env[name] = value
    return env


def system_env(store_path: Path) -> dict[str, str]:
    return server_env(
        {
            "CNOP_STORE": f"sqlite:///{store_path}",
            "CNOP_JWT_SECRET": secrets.token_urlsafe(48),
            "CNOP_PRICE_SOURCE": "manual",  # prices never move: every run trades at the catalogue snapshot
            "CNOP_MAX_PRICE_AGE_SECONDS": "86400",  # ...and the seeded snapshot stays fresh enough to trade
            "CNOP_RATE_LIMIT_ENABLED": "true",  # the limiter runs and sets its headers, as in production
            "CNOP_RATE_LIMIT_PER_IP": "100000000/minute",
            "CNOP_RATE_LIMIT_PER_USER": "100000000/minute",
            "CNOP_DAILY_DEPOSIT_LIMIT": "1000000000",
            "CNOP_DAILY_WITHDRAW_LIMIT": "1000000000",
            "CNOP_LOG_LEVEL": "WARNING",
        }
    )


# --- HTTP for the set-up ------------------------------------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def http(
    base: str, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 60
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def expect(result: tuple[int, Any], status: int, what: str) -> Any:
    if result[0] != status:
        raise BenchError(f"set-up: {what} answered {result[0]} (expected {status}): {result[1]}")
    return result[1]


def create_user(base: str, username: str) -> str:
    """Register and log in; returns the access token."""
    profile = {
        "username": username,
        "email": f"{username}@bench.cnop.dev",
        "password": PASSWORD,
        "first_name": "Bench",
        "last_name": "User",
    }
    expect(http(base, "POST", "/api/v1/auth/register", profile), 201, f"register {username}")
    login = expect(http(base, "POST", "/api/v1/auth/login", {"username": username, "password": PASSWORD}), 200, "login")
    return str(login["access_token"])


def market_order(base: str, token: str, side: str, asset: str, quantity: str) -> Any:
    body = {"order_type": f"market_{side}", "asset_id": asset, "quantity": quantity}
    return expect(http(base, "POST", "/api/v1/orders", body, token), 201, f"market {side} {quantity} {asset}")


def deposit(base: str, token: str, amount: str) -> Any:
    return expect(http(base, "POST", "/api/v1/balance/deposit", {"amount": amount}, token), 201, f"deposit {amount}")


@dataclass
class Fixture:
    """Everything the scenarios need, prepared over HTTP before any measured window."""

    tokens: list[str]
    contention_token: str
    resting_unsupported: str | None = None
    setup_seconds: float = 0.0


def prepare(server: Server, users: int) -> Fixture:
    base = server.url
    started = time.monotonic()
    run_id = secrets.token_hex(3)

    def trader(index: int) -> str:
        token = create_user(base, f"bench_{run_id}_{index:05d}")
        deposit(base, token, USER_DEPOSIT)
        for asset in MARKET_ASSETS:
            market_order(base, token, "buy", asset["id"], str(Decimal(asset["qty"]) * PREBUY_ROUNDS))
        return token

    pool = ThreadPoolExecutor(max_workers=8)
    try:
        tokens = list(pool.map(trader, range(users)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error or Ctrl-C, start no further users
    contender = create_user(base, f"bench_{run_id}_contender")
    deposit(base, contender, CONTENTION["deposit"])
    market_order(base, contender, "buy", CONTENTION["asset"], CONTENTION["prebuy"])
    fixture = Fixture(tokens=tokens, contention_token=contender)
    fixture.resting_unsupported = probe_resting(base, tokens[0])
    fixture.setup_seconds = round(time.monotonic() - started, 1)
    return fixture


def probe_resting(base: str, token: str) -> str | None:
    """Place and cancel one limit order; a reason when the system does not take resting orders yet."""
    body = {"order_type": "limit_buy", "asset_id": RESTING["asset"], "quantity": RESTING["qty"]}
    status, answer = http(base, "POST", "/api/v1/orders", {**body, "price": RESTING["price"]}, token)
    if status != 201:
        code = answer.get("code") if isinstance(answer, dict) else None
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        return f"placing a limit_buy answered {status} {code or ''}: {detail}".strip()
    try:
        order_id = answer["data"]["order_id"]
    except (KeyError, TypeError):
        return f"placing a limit_buy answered 201 without data.order_id: {answer}"
    status, answer = http(base, "DELETE", f"/api/v1/orders/{order_id}", None, token)
    if status != 200 or not isinstance(answer, dict) or answer.get("data", {}).get("status") != "cancelled":
        return f"cancelling a placed limit_buy answered {status}: {answer}"
    return None


# --- wrk ----------------------------------------------------------------------------------------


def lua_literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.:\-/ ]*", text):
        raise ValueError(f"refusing to write {text!r} into a Lua data file")
    return f'"{text}"'


def write_data(workdir: Path, scenario: str, data: dict[str, Any]) -> Path:
    path = workdir / f"{scenario}.data.lua"
    path.write_text(f"-- generated by benchmarks.run for {scenario}\nreturn {lua_literal(data)}\n")
    return path


def start_profiler(pyspy: str, server: Server, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy on core 1 (beside wrk), sampling only the thread that holds the GIL, without pausing the server."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        "taskset", "-c", CLIENT_CORE, pyspy, "record", "--nonblocking", "--gil", "--threads", "--rate", "100",
        "--pid", str(server.pid), "--duration", str(seconds), "--format", "speedscope", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_wrk(
    server: Server,
    script: str,
    data_file: Path,
    seconds: int,
    connections: int,
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """One wrk window; with `profile` (py-spy binary, output file) py-spy records the server meanwhile."""
    command = [
        "taskset", "-c", CLIENT_CORE,
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
        "-s", str(LUA_DIR / script), server.url,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_LUA_DIR": str(LUA_DIR), "BENCH_DATA": str(data_file)}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server.cpu_seconds()
    core_before = _core_busy_seconds(SERVER_CORE)
    profiler = start_profiler(profile[0], server, seconds, profile[1]) if profile else None
    try:
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
        wall = time.monotonic() - started
        server_cpu = server.cpu_seconds() - server_before
        core_after = _core_busy_seconds(SERVER_CORE)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if profiler is not None:
            profiler.wait(timeout=60)  # py-spy stops by itself after `seconds` and writes its file
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk {script} exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    # Share of one core each side used: the server near 1.0 and wrk well below it shows that the
    # server, not the load generator, is what limits the throughput.
    result["server_cpu"] = round(server_cpu / wall, 2)
    # The server's CPU per answered request (ms): what a request costs, whatever the neighbours took.
    result["server_cpu_ms"] = round(server_cpu * 1000 / (result["rps"] * wall), 3) if result["rps"] else None
    result["wrk_cpu"] = round(wrk_cpu / wall, 2)
    # What other processes (and the hypervisor) took from the server's core meanwhile: on a shared
    # machine this is the noise in the numbers; near 0 the run had core 0 to itself.
    busy, stolen = (after - before for after, before in zip(core_after, core_before, strict=True))
    result["server_core_others"] = round(max(0.0, busy - server_cpu) / wall, 2)
    result["server_core_steal"] = round(stolen / wall, 2)
    return result


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class ScenarioRun:
    name: str
    script: str
    data: dict[str, Any]
    connections: int
    skipped: str | None = None


def baseline_run(config: Config) -> ScenarioRun:
    # A token-sized Authorization header, so that the baseline reads requests as big as the system's.
    return ScenarioRun("baseline", "baseline.lua", {"token": "x" * 180}, config.connections)


def plan(config: Config, fixture: Fixture) -> list[ScenarioRun]:
    """The system's scenarios, in the order of `SCENARIOS`."""
    runs = []
    for name in config.scenarios:
        if name == "market_orders":
            data: dict[str, Any] = {"tokens": fixture.tokens, "assets": list(MARKET_ASSETS)}
            runs.append(ScenarioRun(name, "market_orders.lua", data, config.connections))
        elif name == "contention":
            data = {"token": fixture.contention_token, **CONTENTION}
            runs.append(ScenarioRun(name, "contention.lua", data, CONTENTION_CONNECTIONS))
        elif name == "reads":
            runs.append(ScenarioRun(name, "reads.lua", {"tokens": fixture.tokens}, config.connections))
        elif name == "resting_orders":
            data = {"tokens": fixture.tokens, **RESTING}
            runs.append(
                ScenarioRun(name, "resting_orders.lua", data, config.connections, skipped=fixture.resting_unsupported)
            )
    return runs


EMPTY_RESULT: dict[str, Any] = {
    "rps": None,
    "p50_ms": None,
    "p90_ms": None,
    "p99_ms": None,
    "max_ms": None,
    "status_counts": {},
    "ratio_to_baseline": None,
}


def execute(server: Server, scenario: ScenarioRun, config: Config, workdir: Path) -> dict[str, Any]:
    """Warm up, then measure; on a shared machine a window that other processes disturbed is measured
    again (up to `config.attempts` windows) and the least disturbed one is kept. A 5xx in any window,
    warm-ups included, counts."""
    if scenario.skipped:
        print(f"  {scenario.name}: NOT RUN - {scenario.skipped}", flush=True)
        return {**EMPTY_RESULT, "skipped": scenario.skipped}
    data_file = write_data(workdir, scenario.name, scenario.data)
    best: dict[str, Any] | None = None
    profiled: str | None = None  # the py-spy recording of the first measured window
    server_errors = 0
    cpu_ms: list[float] = []  # server CPU ms per request of every measured window
    other_status_counts: list[dict[str, int]] = []
    for attempt in range(1, config.attempts + 1):
        if config.warmup:
            warmup = run_wrk(server, scenario.script, data_file, config.warmup, scenario.connections)
            server_errors += count_5xx(warmup["status_counts"])
            other_status_counts.append(warmup["status_counts"])
        print(f"  {scenario.name}: {config.seconds} s, {scenario.connections} connections ...", flush=True)
        profile = None
        if config.pyspy and attempt == 1:
            profile = (config.pyspy, RESULTS_DIR / "tmp" / f"{scenario.name}.speedscope.json")
        result = run_wrk(server, scenario.script, data_file, config.seconds, scenario.connections, profile)
        if profile is not None:
            profiled = str(profile[1].relative_to(ROOT))
        server_errors += count_5xx(result["status_counts"])
        if result.get("server_cpu_ms") is not None:
            cpu_ms.append(result["server_cpu_ms"])
        print(
            f"  {scenario.name}: {result['rps']:.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
            f"statuses {format_counts(result['status_counts'])}, server CPU {result['server_cpu']:.2f}, "
            f"others on core 0 {result['server_core_others']:.2f}, wrk CPU {result['wrk_cpu']:.2f}",
            flush=True,
        )
        if best is None or result["server_core_others"] < best["server_core_others"]:
            if best is not None:
                other_status_counts.append(best["status_counts"])
            best = result
        else:
            other_status_counts.append(result["status_counts"])
        if best["server_core_others"] <= DISTURBED:
            break
        if attempt < config.attempts:
            print(f"  {scenario.name}: disturbed by other processes; measuring again", flush=True)
    assert best is not None
    report = {
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in best.items()},
        "rps": round(best["rps"], 1),
        "connections": scenario.connections,
        "description": DESCRIPTIONS[scenario.name],
        "attempts": attempt,
        "server_errors": server_errors,
        "server_cpu_ms": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
        "server_cpu_ms_windows": cpu_ms,
    }
    if profiled is not None:
        report["profile"] = profiled
    if other_status_counts:
        # Statuses of the warm-ups and of measured windows that were not kept (5xx among them count).
        merged: dict[str, int] = {}
        for counts in other_status_counts:
            for status, n in counts.items():
                merged[status] = merged.get(status, 0) + n
        report["unreported_status_counts"] = merged
    return report


def count_5xx(counts: dict[str, int]) -> int:
    return sum(n for status, n in counts.items() if status.startswith("5"))


def run_guarded(name: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return step()
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"  {name}: FAILED - {exc}", file=sys.stderr, flush=True)
        return {**EMPTY_RESULT, "error": str(exc)[:2000]}


# --- audit --------------------------------------------------------------------------------------


def audit(store_path: Path, workdir: Path) -> tuple[bool, str]:
    cnop = Path(sys.executable).with_name("cnop")
    command = [str(cnop)] if cnop.exists() else [sys.executable, "-c", "from cnop.cli import main; main()"]
    done = subprocess.run(
        [*command, "audit", "--store", f"sqlite:///{store_path}"],
        cwd=workdir,
        env=server_env({"COLUMNS": "120", "NO_COLOR": "1"}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


# --- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    memory_gb = None
    with contextlib.suppress(OSError, AttributeError):
        kb = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        memory_gb = round(int(kb.group(1)) / 1024 / 1024, 1)  # type: ignore[union-attr]
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.MULTILINE)
        os_name = pretty.group(1) if pretty else os_name
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    packages = {}
    for name in ("fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools", "cnop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": os_name,
        "kernel": platform.release(),
        "wrk": wrk_version[0].split(" Copyright")[0] if wrk_version else "unknown",
        "packages": packages,
        "server_core": int(SERVER_CORE),
        "client_core": int(CLIENT_CORE),
    }


def add_ratios(scenarios: dict[str, dict[str, Any]]) -> None:
    base = scenarios.get("baseline") or {}
    for result in scenarios.values():
        if result.get("rps") is None or not base.get("rps") or not base.get("p99_ms"):
            result["ratio_to_baseline"] = None
            continue
        result["ratio_to_baseline"] = {
            "rps": round(result["rps"] / base["rps"], 3),
            "p99": round(result["p99_ms"] / base["p99_ms"], 2),
        }


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for label, scenario, metric, op, limit in TARGETS:
        value: Any = None
        if scenario is None:
            value = report.get(metric)
        else:
            result = report["scenarios"].get(scenario) or {}
            ratios = result.get("ratio_to_baseline") or {}
            if metric == "rps_ratio":
                value = ratios.get("rps")
            elif metric == "p99_ratio":
                value = ratios.get("p99")
            elif result.get("rps") is not None:
                value = result.get(metric)
        ok = None
        if value is not None:
            ok = {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
        checks.append({"target": label, "value": value, "ok": ok})
    return checks


def format_counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {report['started_at']}, {report['settings']['seconds']} s per scenario, "
        f"wrk -t1 on core {m['client_core']}, uvicorn (uvloop, httptools, 1 worker) on core {m['server_core']}, "
        f"SQLite store. Set-up (users, funds, tokens) took {_num(report.get('setup_seconds'))} s outside "
        "the measured windows.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']} (kernel {m['kernel']}), "
        f"{m['python']}, {m['wrk']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        "",
        "| scenario | conns | req/s | p50 ms | p90 ms | p99 ms | max ms | rps × base | p99 × base "
        "| server CPU | CPU ms/req | others on core 0 | wrk CPU | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["scenarios"].items():
        ratio = r.get("ratio_to_baseline") or {}
        if r.get("rps") is None:
            why = r.get("skipped") or r.get("error") or "not run"
            lines.append(f"| {name} | | not run: {why.splitlines()[0][:160]} | | | | | | | | | | | |")
            continue
        statuses = format_counts(r["status_counts"])
        codes = r.get("error_codes") or {}
        if codes:
            statuses += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())) + ")"
        lines.append(
            f"| {name} | {r.get('connections', '')} | {r['rps']:.0f} | {_num(r['p50_ms'])} | {_num(r['p90_ms'])} "
            f"| {_num(r['p99_ms'])} | {_num(r['max_ms'])} | {_num(ratio.get('rps'), 2)} | {_num(ratio.get('p99'), 2)} "
            f"| {_num(r.get('server_cpu'), 2)} | {_num(r.get('server_cpu_ms'), 3)} "
            f"| {_num(r.get('server_core_others'), 2)} "
            f"| {_num(r.get('wrk_cpu'), 2)} | {statuses} |"
        )
    disturbed = [n for n, r in report["scenarios"].items() if (r.get("server_core_others") or 0) > DISTURBED]
    if disturbed:
        lines += [
            "",
            f"**Disturbed:** other processes took more than {DISTURBED:.0%} of core 0 during "
            f"{', '.join(disturbed)}; those numbers understate the server. Re-run on a quiet machine.",
        ]
    lines += [
        "",
        f"Server RSS after the run: **{_num(report['rss_mb'])} MB** (peak {_num(report.get('rss_peak_mb'))} MB); "
        f"baseline app RSS {_num(report.get('baseline_rss_mb'))} MB.",
        f"5xx responses: **{report['server_errors']}**; error lines in the server log: "
        f"{report.get('server_log_errors', '-')}; audit: **{'passed' if report['audit_ok'] else 'FAILED'}**.",
        *(f"- server log: {n} × `{what}`" for what, n in (report.get("server_log_error_summary") or {}).items()),
        "",
        "| target | value | met |",
        "|---|---:|---|",
    ]
    for check in report["targets"]:
        met = {True: "yes", False: "**NO**", None: "not measured"}[check["ok"]]
        value = check["value"]
        shown = value if isinstance(value, bool) or value is None else f"{value:g}"
        lines.append(f"| {check['target']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (RESULTS_DIR / "latest.md").write_text(markdown(report))


# --- main ---------------------------------------------------------------------------------------


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both unwind through every `finally`, which stops the server and wrk.

    SIGINT is set explicitly: a shell starting this in the background leaves it ignored."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


def run(config: Config) -> int:
    check_tools()
    workdir = Path(tempfile.mkdtemp(prefix="cnop-bench-"))
    store_path = workdir / "cnop.db"
    report: dict[str, Any] = {
        "machine": machine(),
        "scenarios": {},
        "rss_mb": None,
        "audit_ok": False,
        "server_errors": 0,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "seconds": config.seconds,
            "connections": config.connections,
            "contention_connections": CONTENTION_CONNECTIONS,
            "users": config.users,
            "warmup_seconds": config.warmup,
            "attempts": config.attempts,
            "profiled": config.pyspy is not None,
            "scenarios": list(config.scenarios),
        },
    }
    print(f"cnop benchmark: {', '.join(config.scenarios)}; {config.seconds} s each; work folder {workdir}")
    try:
        if "baseline" in config.scenarios:
            print("baseline app ...", flush=True)
            baseline = Server("baseline", "benchmarks.baseline_app:create_app", server_env({}), workdir)
            with running(baseline):
                report["scenarios"]["baseline"] = run_guarded(
                    "baseline", lambda: execute(baseline, baseline_run(config), config, workdir)
                )
                report["baseline_rss_mb"] = baseline.rss_mb()[0]

        system_scenarios = [name for name in config.scenarios if name != "baseline"]
        if system_scenarios:
            system = Server("system", SYSTEM_FACTORY, system_env(store_path), workdir)
            with running(system):
                if not system.single_process():
                    raise BenchError("uvicorn started worker processes; the RSS would not be the server's")
                # Set-up only: the password hashing of 200 registrations and logins runs on both cores,
                # then every thread goes back to core 0 before anything is measured.
                system.pin(f"{SERVER_CORE},{CLIENT_CORE}")
                print(f"set-up: {config.users} users (register, login, deposit, buy) ...", flush=True)
                try:
                    fixture = prepare(system, config.users)
                finally:
                    system.pin(SERVER_CORE)
                if not system.threads_pinned_to(SERVER_CORE):
                    raise BenchError("could not pin every server thread to core 0")
                report["setup_seconds"] = fixture.setup_seconds
                print(f"set-up done in {fixture.setup_seconds} s", flush=True)
                for scenario in plan(config, fixture):
                    report["scenarios"][scenario.name] = run_guarded(
                        scenario.name, functools.partial(execute, system, scenario, config, workdir)
                    )
                report["rss_mb"], report["rss_peak_mb"] = system.rss_mb()
            report["server_log_errors"] = system.log_errors()
            report["server_log_error_summary"] = system.log_error_summary()
            print("audit ...", flush=True)
            report["audit_ok"], report["audit_output"] = audit(store_path, workdir)
            print(report["audit_output"])
        else:
            report["audit_ok"] = True  # nothing touched a store
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        report["error"] = str(exc)[:4000]
    except BaseException:  # Ctrl-C or SIGTERM: the servers are already stopped; leave nothing behind
        if config.keep_store:
            print(f"kept the store and server logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        raise

    report["server_errors"] = sum(r.get("server_errors", 0) for r in report["scenarios"].values())
    add_ratios(report["scenarios"])
    report["targets"] = evaluate_targets(report)
    write_results(report)
    print()
    print(markdown(report))
    print(f"written: {RESULTS_DIR / 'latest.json'} and {RESULTS_DIR / 'latest.md'}")

    failures = failures_of(report)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if failures or config.keep_store:
        print(f"kept the store and server logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def failures_of(report: dict[str, Any]) -> list[str]:
    """What makes the run fail: a step that broke, a 5xx, a broken invariant (targets only report)."""
    failures = []
    if report.get("error"):
        failures.append(report["error"].splitlines()[0])
    crashed = [name for name, r in report["scenarios"].items() if r.get("error")]
    if crashed:
        failures.append(f"scenario(s) failed to run: {', '.join(crashed)}")
    if report["server_errors"]:
        failures.append(f"{report['server_errors']} responses were 5xx")
    if not report["audit_ok"]:
        failures.append("cnop audit found broken invariants")
    return failures


def main() -> int:
    _interrupt_on_signals()
    try:
        config = Config.from_env()
        return run(config)
    except UsageError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process the run started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
