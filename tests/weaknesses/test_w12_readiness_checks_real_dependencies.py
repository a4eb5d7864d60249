"""Weak point 12 (local half): readiness must check the real dependencies.

The circuit breaker itself belongs to the cloud shape's issue; here `/health/ready` answers 503
while the store fails or the price is stale, and 200 when both answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.faulty_store import Fault, FaultyStore
from tests.support.wire import read


@pytest.fixture
async def watched(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FaultyStore, FakeClock]]:
    made: list[FaultyStore] = []

    def factory() -> Any:
        made.append(FaultyStore(store_factory()))
        return made[-1]

    clock = FakeClock(datetime.now(UTC))
    api, lifespan = await open_api(factory, clock=clock)
    yield api, made[0], clock
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_readiness_follows_the_store_and_the_price_feed(watched: tuple[Api, FaultyStore, FakeClock]) -> None:
    api, store, clock = watched
    for asset in ("BTC", "ETH"):
        api.set_price(asset, "100")
    r = await api.client.get("/health/ready")
    assert r.status_code == 200, r.text

    store.arm(0, Fault.ERROR)  # the next store call (the readiness ping) fails
    r = await api.client.get("/health/ready")
    store.disarm()
    assert r.status_code == 503 and read(r)["checks"]["store"]["status"] != "ok", r.text
    assert "Injected" not in r.text and "injected" not in r.text

    assert (await api.client.get("/health/ready")).status_code == 200
    clock.advance(api.container.settings.max_price_age_seconds + 5)
    r = await api.client.get("/health/ready")
    assert r.status_code == 503 and read(r)["checks"]["prices"]["status"] != "ok", r.text
    assert (await api.client.get("/health")).status_code in (200, 503)  # liveness still answers
