"""A fleet on one machine for the multi-process tests: Redis, one store, API processes and workers.

What an operator runs when the README's AWS section says "more than one process": N `cnop serve`
API processes with `CNOP_TRIGGER_ENGINE=false` and M `cnop serve worker` processes, all on one
store (a SQLite file, or DynamoDB Local) and one Redis (`CNOP_REDIS_URL`), every one on
127.0.0.1. Tokens are EdDSA (every API process signs with the same key, every process verifies),
so the workers, which run the cloud shape's worker role, accept them too.

The test owns Redis (`tests.support.redis_server.RedisServer`, which can stop and start again
on the same port, for the outage test) and passes its URL. Each process writes to
`WORKDIR/logs/NAME.log`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import redis

from cnop.dev import MONOLITH, LocalProcesses, Member
from tests.support.cnop_server import free_port
from tests.support.wire import exact, read

PASSWORD = "Str0ng!Passw0rd"
ADMIN = "fleet_admin"
DEADLINE_SECONDS = 15.0
T = TypeVar("T")


@dataclass
class Fleet(LocalProcesses):
    """API processes (the whole app, `MONOLITH`) and workers; started, killed and stopped by the
    member functions that `cnop dev cloud` uses (`cnop.dev.LocalProcesses`)."""

    workdir: Path
    store: str
    redis_url: str
    apis: int = 2
    workers: int = 2
    extra_env: Mapping[str, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.private_key = self.workdir / "keys" / "signing" / "jwt.key"
        self.public_keys = self.workdir / "keys" / "public"
        for index in range(self.workers):
            self.members.append(Member(f"worker-{index + 1}", "worker", free_port(), {}))
        for index in range(self.apis):
            env = {"CNOP_TRIGGER_ENGINE": "false", "CNOP_JWT_PRIVATE_KEY_FILE": str(self.private_key)}
            self.members.append(Member(f"api-{index + 1}", MONOLITH, free_port(), env))

    # --- environment -----------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNOP_")}
        env.update(
            {
                "CNOP_STORE": self.store,
                "CNOP_REDIS_URL": self.redis_url,
                "CNOP_JWT_ALGORITHM": "EdDSA",
                "CNOP_JWT_PUBLIC_KEYS_DIR": str(self.public_keys),
                "CNOP_TRUSTED_PROXIES": "127.0.0.1",
                "CNOP_LOG_JSON": "true",
                "CNOP_PASSWORD_HASH_WORKERS": "1",
                **self.extra_env,
            }
        )
        return env

    # --- members ---------------------------------------------------------------------------

    def api_urls(self) -> list[str]:
        return [m.url for m in self.members if m.role == MONOLITH]

    def worker_names(self) -> list[str]:
        return [m.name for m in self.members if m.role == "worker"]

    # --- the whole fleet -------------------------------------------------------------------

    def start(self) -> None:
        """Keys, `db init`, an admin, the workers and the API processes; each ready."""
        try:
            self.cnop("keys", "generate", "--private-key", str(self.private_key), "--public-key",
                      str(self.public_keys / "jwt.pem"))  # fmt: skip
            self.cnop("db", "init")
            self.cnop("user", "create", ADMIN, "--email", f"{ADMIN}@example.com", "--admin", "--password-stdin",
                      stdin=PASSWORD.encode())  # fmt: skip
            workers = [m for m in self.members if m.role == "worker"]
            apis = [m for m in self.members if m.role == MONOLITH]
            for member in workers + apis:
                self.start_member(member)
            self.wait_ready(workers + apis)
        except BaseException:
            self.stop()
            raise


@contextlib.contextmanager
def running_fleet(workdir: Path, store: str, redis_url: str, **env: str) -> Iterator[Fleet]:
    with Fleet(workdir, store, redis_url, extra_env=env) as fleet:
        yield fleet


def client(url: str) -> httpx2.Client:
    return httpx2.Client(base_url=url, timeout=30, trust_env=False)


def login(http: httpx2.Client, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = http.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {read(r)['access_token']}"}


def register(http: httpx2.Client, username: str) -> None:
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD,
            "first_name": "Ada", "last_name": "Lovelace"}  # fmt: skip
    r = http.post("/api/v1/auth/register", json=body)
    assert r.status_code == 201, r.text


def json_of(response: httpx2.Response) -> Any:
    assert response.status_code < 300, (response.status_code, response.text)
    return read(response)


def quote(http: httpx2.Client, asset: str) -> tuple[Decimal, str]:
    """(price, last_updated) of an asset as one API process quotes it."""
    r = http.get(f"/api/v1/inventory/assets/{asset}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = read(r)["data"]
    return exact(data["price_usd"]), str(data["last_updated"])


def lease_holder(shared: redis.Redis, prefix: str, fleet: Fleet) -> tuple[int, str] | None:
    """(token, worker name) of the price lease's holder, from its value `TOKEN:HOST:PID:NONCE`."""
    value = shared.get(f"{prefix}lease:prices")
    if not value:
        return None
    token, _host, pid, _nonce = str(value).split(":")
    for name in fleet.worker_names():
        process = fleet.member(name).process
        if process is not None and process.pid == int(pid):
            return int(token), name
    return int(token), f"pid {pid}"


def poll(fetch: Callable[[], T], until: Callable[[T], bool], what: str) -> T:
    """`fetch()` until `until` holds of its value, for at most DEADLINE_SECONDS (never timed)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS:g} s: {what} (last: {value!r})")
        time.sleep(0.1)
