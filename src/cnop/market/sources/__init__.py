"""Price sources: where ticks come from. One module per source, and the factory.

`open_price_source(spec, ...)` picks one from `CNOP_PRICE_SOURCE`:

- `simulated` (default): a seeded, reproducible random walk per asset (`simulated.py`);
- `replay:PATH.csv`: historical prices from a CSV file `timestamp,asset_id,price` (`replay.py`);
- `http:URL`: a CoinGecko-compatible `/coins/markets` endpoint, polled (`http.py`);
- `manual`: prices set by hand (the admin endpoint, tests) (`manual.py`).

The pump that applies a source to the price book is `cnop.market.feed.PriceFeed`.
"""

from cnop.market.sources.factory import open_price_source
from cnop.market.sources.http import HttpPriceSource
from cnop.market.sources.manual import ManualPriceSource
from cnop.market.sources.replay import ReplayPriceSource
from cnop.market.sources.simulated import SimulatedPriceSource

__all__ = ["HttpPriceSource", "ManualPriceSource", "ReplayPriceSource", "SimulatedPriceSource", "open_price_source"]
