"""A CoinGecko-compatible `/coins/markets` server on 127.0.0.1 whose prices the test sets.

Every process of a multi-process test polls it (`CNOP_PRICE_SOURCE=http:URL`), so they all see
the same price at about the same time, and a test can move the market across an order's limit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cnop.market.catalogue import load_catalogue


class FakePrices:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prices = {a.asset_id: (a.coingecko_id, a.symbol, a.price_usd) for a in load_catalogue()}
        self.url = ""

    def set(self, asset_id: str, price: Decimal) -> None:
        with self._lock:
            coingecko_id, symbol, _ = self._prices[asset_id]
            self._prices[asset_id] = (coingecko_id, symbol, price)

    def get(self, asset_id: str) -> Decimal:
        with self._lock:
            return self._prices[asset_id][2]

    def body(self) -> bytes:
        with self._lock:
            entries = [
                {"id": cid, "symbol": sym, "current_price": str(price)} for cid, sym, price in self._prices.values()
            ]
        # CoinGecko sends numbers; a JSON number with the exact digits.
        return json.dumps(entries).replace('"current_price": "', '"current_price": ').replace('"}', "}").encode()


@contextmanager
def serve_fake_prices() -> Iterator[FakePrices]:
    prices = FakePrices()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = prices.body()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    prices.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield prices
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
