"""The shipped asset catalogue: complete, exact, and validated on load."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest

from cnop.common.money import places
from cnop.market.catalogue import CatalogueAsset, load_catalogue, parse_catalogue

NUMERIC_FIELDS = {
    "min_quantity",
    "price_usd",
    "market_cap",
    "total_volume_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
    "ath",
    "atl",
    "house_inventory",
}


def shipped_document() -> dict[str, Any]:
    text = resources.files("cnop.market").joinpath("data/assets.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def parse(document: dict[str, Any]) -> list[CatalogueAsset]:
    return parse_catalogue(json.dumps(document))


def test_catalogue_lists_20_to_50_assets_with_unique_well_formed_ids() -> None:
    assets = load_catalogue()

    assert 20 <= len(assets) <= 50
    ids = [a.asset_id for a in assets]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Z0-9]{1,10}", asset_id) for asset_id in ids)
    assert all(a.symbol == a.asset_id.lower() for a in assets)


def test_every_entry_writes_every_key_and_every_number_as_a_string() -> None:
    entries = shipped_document()["assets"]

    for entry in entries:
        assert set(entry) == set(CatalogueAsset.model_fields), entry["asset_id"]
        for field in NUMERIC_FIELDS:
            assert entry[field] is None or isinstance(entry[field], str), (entry["asset_id"], field)
        assert entry["description"].strip()
        assert entry["image"].startswith("https://")


def test_btc_snapshot_is_between_40k_and_90k_and_parsed_exactly() -> None:
    btc = next(a for a in load_catalogue() if a.asset_id == "BTC")

    assert Decimal(40_000) <= btc.price_usd <= Decimal(90_000)
    assert btc.price_usd == Decimal("67250.00")
    assert str(btc.price_usd) == "67250.00"
    assert btc.min_quantity == Decimal("0.00001")
    assert btc.scale == 8
    assert btc.max_supply == Decimal(21_000_000)


def test_catalogue_is_in_market_cap_rank_order_with_unique_ranks() -> None:
    ranks = [a.market_cap_rank for a in load_catalogue()]

    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)


def test_stablecoins_are_priced_at_their_one_dollar_peg() -> None:
    stablecoins = [a for a in load_catalogue() if a.category == "stablecoin"]

    assert {a.asset_id for a in stablecoins} >= {"USDT", "USDC"}
    assert all(a.price_usd == 1 for a in stablecoins)


def test_house_inventory_is_worth_at_least_five_million_usd_and_fits_the_scale() -> None:
    for asset in load_catalogue():
        assert asset.house_inventory * asset.price_usd >= 5_000_000, asset.asset_id
        assert places(asset.house_inventory) <= asset.scale
        assert places(asset.min_quantity) <= asset.scale
        assert asset.min_quantity * asset.price_usd <= 10, asset.asset_id


def test_assets_are_active_and_immutable() -> None:
    asset = load_catalogue()[0]

    assert all(a.is_active for a in load_catalogue())
    with pytest.raises(ValueError, match="frozen"):
        asset.price_usd = Decimal(1)  # type: ignore[misc]


def test_load_catalogue_is_cached_but_each_caller_gets_its_own_list() -> None:
    first, second = load_catalogue(), load_catalogue()

    assert first == second
    assert first is not second
    assert first[0] is second[0]
    first.clear()
    assert load_catalogue() == second


def test_the_shipped_document_parses_to_the_loaded_catalogue() -> None:
    assert parse(shipped_document()) == load_catalogue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["assets"][1].update(asset_id="BTC", symbol="btc"), "duplicate asset_id"),
        (lambda d: d["assets"][1].update(market_cap_rank=1), "duplicate market_cap_rank"),
        (lambda d: d["assets"][0].update(price_usd="95000.00"), "BTC snapshot price"),
        (lambda d: d["assets"][0].update(price_usd="39999.99"), "BTC snapshot price"),
        (lambda d: d["assets"][0].update(asset_id="btc!"), "asset_id"),
        (lambda d: d["assets"][0].pop("house_inventory"), "house_inventory"),
        (lambda d: d["assets"][0].update(house_inventory="1.123456789"), "decimal places"),
        (lambda d: d["assets"][0].update(price_usd="-1"), "price_usd"),
        (lambda d: d["assets"][0].update(price_usd="NaN"), "price_usd"),
        (lambda d: d["assets"][0].update(surprise="field"), "surprise"),
        (lambda d: d.update(assets=d["assets"][:19]), "20–50 assets"),
    ],
)
def test_a_malformed_catalogue_is_refused_naming_the_problem(change: Any, message: str) -> None:
    document = copy.deepcopy(shipped_document())
    change(document)

    with pytest.raises(ValueError, match=message):
        parse(document)


def test_a_python_float_is_refused_where_a_price_is_expected() -> None:
    entry = copy.deepcopy(shipped_document()["assets"][0])
    entry["price_usd"] = 67250.1

    with pytest.raises(ValueError, match="not a JSON float"):
        CatalogueAsset.model_validate(entry)
