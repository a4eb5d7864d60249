"""Kept renderings of hot reads give the very bytes a fresh rendering gives, across ticks and writes.

The asset list and asset detail bodies are rendered once per asset list and price-book version
(`cnop.services.inventory.service`). Each answer here is compared, byte for byte, with what the
routes wrote before they kept anything: the response model built from the assets as stored
(read without any cache) and the price book, encoded by `jsonio.dumps`.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.database import keys
from cnop.common.database.store import Update
from cnop.common.jsonio import dumps
from cnop.common.shared.invalidation import ASSET
from cnop.market.prices import Tick
from cnop.services.inventory.schemas import AssetDetailResponse
from cnop.services.inventory.service import InventoryService
from tests.support.api import Api

# Headers that differ from one answer to the next whatever the body.
_PER_REQUEST = {"x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "date", "x-process-time"}


def fresh_inventory(api: Api) -> InventoryService:
    """The inventory use cases on a DAO that keeps nothing: every read goes to the store."""
    c = api.container
    return InventoryService(AssetDAO(c.store, c.clock, cache_seconds=0), c.price_book, c.catalogue, c.clock)


async def fresh_list(api: Api, params: dict[str, Any]) -> bytes:
    page = await fresh_inventory(api).list_assets(
        active_only=params.get("active_only", "true") == "true",
        category=params.get("category"),
        limit=params.get("limit", 50),
        cursor=params.get("cursor"),
    )
    return dumps(page)


async def fresh_detail(api: Api, asset_id: str) -> bytes:
    inventory = fresh_inventory(api)
    asset = await inventory.assets.get_asset(asset_id)
    return dumps(AssetDetailResponse(data=inventory.asset_detail(asset)))


def stable_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in _PER_REQUEST}


async def check_list(api: Api, params: dict[str, Any]) -> Any:
    r = await api.client.get("/api/v1/inventory/assets", params=params)
    assert r.status_code == 200, r.text
    assert r.content == await fresh_list(api, params), params
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    return r


async def check_detail(api: Api, asset_id: str) -> Any:
    r = await api.client.get(f"/api/v1/inventory/assets/{asset_id}")
    assert r.status_code == 200, r.text
    assert r.content == await fresh_detail(api, asset_id.upper()), asset_id
    assert r.headers["content-type"] == "application/json"
    return r


async def admin_toggle(api: Api, admin: dict[str, str], asset_id: str, active: bool) -> None:
    action = "activate" if active else "deactivate"
    r = await api.client.post(f"/api/v1/admin/assets/{asset_id}/{action}", headers=admin)
    assert r.status_code == 200, r.text


async def test_kept_asset_bodies_follow_ticks_and_asset_writes(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    admin = await api.admin()
    pages = [{"limit": 250}, {}, {"limit": 7}, {"active_only": "false", "limit": 250}]
    first = await check_list(api, {"limit": 250})
    again = await check_list(api, {"limit": 250})  # the kept body, with the same headers
    assert again.content == first.content and stable_headers(again) == stable_headers(first)
    detail = await check_detail(api, "BTC")
    assert stable_headers(await check_detail(api, "btc")) == stable_headers(detail)

    # A tick: the list and the detail show it at once.
    clock.advance(5)
    api.set_price("BTC", "70123.45")
    body = (await check_list(api, {"limit": 250})).json()
    assert next(a for a in body["data"] if a["asset_id"] == "BTC")["price_usd"] == "70123.45"
    assert (await check_detail(api, "BTC")).json()["data"]["high_24h"] == "70123.45"

    # An asset write through the admin routes: counts, pages and the detail follow it.
    await admin_toggle(api, admin, "SOL", active=False)
    for params in pages:
        await check_list(api, params)
    listed = (await check_list(api, {"limit": 250})).json()
    assert "SOL" not in [a["asset_id"] for a in listed["data"]]
    assert listed["active_count"] == listed["total_count"] - 1
    assert (await check_detail(api, "SOL")).json()["data"]["availability_status"] == "unavailable"
    await admin_toggle(api, admin, "SOL", active=True)
    assert (await check_detail(api, "SOL")).json()["data"]["is_active"] is True
    cursor = (await check_list(api, {"limit": 7})).json()["next_cursor"]
    await check_list(api, {"limit": 7, "cursor": cursor})

    # A batch of ticks for many assets at a later moment, and one for an asset at the same moment.
    clock.advance(7200)
    api.container.price_book.apply(
        [Tick("ETH", Decimal("2999.99"), clock.now()), Tick("SOL", Decimal("0.00000123"), clock.now())]
    )
    api.set_price("ETH", "3001")
    for params in pages:
        await check_list(api, params)
    for asset_id in ("BTC", "ETH", "SOL"):
        await check_detail(api, asset_id)


async def test_an_asset_change_announced_by_another_process_reaches_the_kept_bodies(
    fake_clock_api: tuple[Api, FakeClock],
) -> None:
    """Another process writes the asset and publishes on the invalidation channel (as AssetDAO does)."""
    api, _ = fake_clock_api
    before = (await check_list(api, {"limit": 250})).json()
    await check_detail(api, "ETH")
    await api.container.store.transact(
        [Update(keys.INVENTORY, keys.asset_key("ETH"), set={"name": "Ether (renamed)", "is_active": False})]
    )
    await api.container.invalidations.publish(ASSET, "ETH")
    after = (await check_list(api, {"limit": 250})).json()
    assert after["active_count"] == before["active_count"] - 1
    detail = (await check_detail(api, "ETH")).json()["data"]
    assert detail["name"] == "Ether (renamed)" and detail["is_active"] is False


async def test_random_ticks_writes_and_reads_always_answer_as_a_fresh_rendering(
    fake_clock_api: tuple[Api, FakeClock],
) -> None:
    api, clock = fake_clock_api
    admin = await api.admin()
    rng = random.Random(16)
    assets = ["BTC", "ETH", "SOL", "ADA", "DOGE"]
    categories = sorted({a.category for a in api.container.catalogue if a.category})
    inactive: set[str] = set()
    for _ in range(60):
        step = rng.random()
        if step < 0.3:
            clock.advance(rng.choice([0, 1, 7, 59, 300]))
            price = Decimal(rng.randint(1, 10**9)).scaleb(-rng.randint(0, 8))
            api.set_price(rng.choice(assets), str(price))
        elif step < 0.45:
            asset_id = rng.choice(assets)
            await admin_toggle(api, admin, asset_id, active=asset_id in inactive)
            inactive ^= {asset_id}
        elif step < 0.8:
            params: dict[str, Any] = {"limit": rng.choice([1, 7, 50, 250])}
            if rng.random() < 0.3:
                params["active_only"] = "false"
            if rng.random() < 0.3:
                params["category"] = rng.choice([*categories, "nothing-like-it"])
            await check_list(api, params)
        else:
            await check_detail(api, rng.choice(assets))
