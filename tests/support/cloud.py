"""The cloud shape as real processes for the multi-process tests (`cnop.dev.CloudOnOneMachine`).

Every process polls one fake price server the test controls (so they agree on the market), on
the session's DynamoDB Local, with a table prefix of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from cnop.dev import CloudOnOneMachine, free_base_port
from tests.support.fake_prices import FakePrices
from tests.support.wire import read

PASSWORD = "Str0ng!Passw0rd"
DEADLINE = 60.0
# Two workers: they split the trigger work by asset (shard leases in Redis) and compete for the
# price lease, as in a cluster.
WORKERS = 2


@contextmanager
def running_cloud(
    workdir: Path,
    dynamodb_endpoint: str,
    prices: FakePrices,
    extra_env: Mapping[str, str] | None = None,
    *,
    redis_url: str | None = None,
) -> Iterator[CloudOnOneMachine]:
    """Two gateways, user, order, inventory and insights, and the workers, ready; stopped after.

    With `redis_url` every process shares its state through that Redis, under a key prefix of
    this shape's own.
    """
    shape = CloudOnOneMachine(
        workdir,
        "dynamodb",
        base_port=free_base_port(),
        gateways=2,
        workers=WORKERS,
        redis_url=redis_url,
        extra_env={
            "CNOP_REDIS_PREFIX": f"cloud{uuid.uuid4().hex[:8]}:",
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "CNOP_DYNAMODB_TABLE_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            "CNOP_PRICE_SOURCE": f"http:{prices.url}",
            "CNOP_PRICE_TICK_SECONDS": "0.5",
            "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
            "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
            "CNOP_PASSWORD_HASH_WORKERS": "1",
            **(extra_env or {}),
        },
    )
    with shape:
        yield shape


def client(cloud: CloudOnOneMachine, gateway: int = 0) -> httpx2.Client:
    return httpx2.Client(base_url=cloud.gateway_urls()[gateway], timeout=30, trust_env=False)


def new_user(http: httpx2.Client) -> tuple[str, dict[str, str]]:
    """Register and log in a fresh user through the gateway; (username, auth headers)."""
    username = f"e2e_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD,
            "first_name": "Ada", "last_name": "Lovelace"}  # fmt: skip
    r = http.post("/api/v1/auth/register", json=body)
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return username, {"Authorization": f"Bearer {read(r)['access_token']}"}


def poll(fetch: Any, until: Any, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met in {deadline:g} s; last: {value}")
        time.sleep(0.25)


def gateway_metrics(cloud: CloudOnOneMachine, gateway: int) -> str:
    with client(cloud, gateway) as http:
        return http.get("/metrics").text


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in a Prometheus text page: (labels, value) pairs."""
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def breaker_view(cloud: CloudOnOneMachine, gateway: int, upstream: str) -> tuple[int, dict[str, float]]:
    """One gateway's breaker of `upstream`, from its /metrics: (state gauge, transitions by state entered)."""
    text = gateway_metrics(cloud, gateway)
    states = [v for labels, v in metric_samples(text, "cnop_circuit_breaker_state") if labels["upstream"] == upstream]
    transitions = {
        labels["state"]: value
        for labels, value in metric_samples(text, "cnop_circuit_breaker_transitions_total")
        if labels["upstream"] == upstream
    }
    assert len(states) == 1, text
    return int(states[0]), transitions


def all_pages(http: httpx2.Client, path: str, headers: Mapping[str, str], key: str = "data") -> list[Any]:
    """Every item of a cursor-paged listing."""
    items: list[Any] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        r = http.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = read(r)
        items.extend(page[key])
        if not page.get("has_more"):
            return items
        params["cursor"] = page["next_cursor"]
