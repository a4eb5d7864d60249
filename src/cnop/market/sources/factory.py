"""`open_price_source(spec, ...)`: the source `CNOP_PRICE_SOURCE` names."""

from __future__ import annotations

from collections.abc import Sequence

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.market.catalogue import CatalogueAsset
from cnop.market.prices import PriceSource
from cnop.market.sources.http import HttpPriceSource
from cnop.market.sources.manual import ManualPriceSource
from cnop.market.sources.replay import ReplayPriceSource
from cnop.market.sources.simulated import SimulatedPriceSource


def open_price_source(spec: str, catalogue: Sequence[CatalogueAsset], settings: Settings, clock: Clock) -> PriceSource:
    """The source named by `spec`: `simulated`, `replay:PATH.csv`, `http:URL` or `manual`.

    The tick interval (and the HTTP polling interval) is `settings.price_tick_seconds`.
    Raises ValueError for an unknown spec, and whatever the source raises for a bad argument
    (a missing replay file, a non-http URL).
    """
    text = spec.strip()
    kind, _, argument = text.partition(":")
    kind = kind.lower()
    known_assets = frozenset(asset.asset_id for asset in catalogue)
    if kind == "simulated" and not argument:
        return SimulatedPriceSource(
            catalogue, clock=clock, seed=settings.price_seed, tick_seconds=settings.price_tick_seconds
        )
    if kind == "manual" and not argument:
        return ManualPriceSource(clock, known_assets=known_assets)
    if kind == "replay" and argument:
        return ReplayPriceSource(
            argument,
            clock=clock,
            interval_seconds=settings.price_tick_seconds,
            loop=settings.price_replay_loop,
            known_assets=known_assets,
        )
    if kind in ("http", "https") and argument:
        # `http:https://host/api/v3` is the documented form; a bare `https://host/...` works too.
        url = text if argument.startswith("//") else argument
        return HttpPriceSource(url, catalogue, clock=clock, interval_seconds=settings.price_tick_seconds)
    raise ValueError(f"unknown price source {spec!r}: expected simulated, replay:PATH.csv, http:URL or manual")
