"""The HTTP price source against a scripted CoinGecko-style server on 127.0.0.1.

The server answers each request with the next step of its script (then repeats the last step),
so a test can walk the source through timeouts, errors and garbage and see it recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cnop.common.clock import FakeClock
from cnop.market.catalogue import load_catalogue
from cnop.market.prices import Tick
from cnop.market.sources.http import HttpPriceSource, PricePollFailed, backoff_delay, markets_endpoint

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
# Long enough that the fake market's thread answers in time on a loaded machine (with 0.3 s a
# scripted 429 was sometimes reported as "no answer"); the stall step waits three times this.
CLIENT_TIMEOUT = 1.5

Step = Callable[["ScriptedHandler"], None]


def reply(body: str, status: int = 200, content_type: str = "application/json", **headers: str) -> Step:
    def step(handler: ScriptedHandler) -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(data)

    return step


def stall(seconds: float) -> Step:
    def step(handler: ScriptedHandler) -> None:
        handler.market.stopping.wait(seconds)
        reply("[]")(handler)

    return step


class FakeMarket(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.steps: list[Step] = []
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/api/v3"

    def script(self, *steps: Step) -> None:
        with self._lock:
            self.steps = list(steps)

    def next_step(self, path: str) -> Step:
        with self._lock:
            self.requests.append(path)
            return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]


class ScriptedHandler(BaseHTTPRequestHandler):
    server: FakeMarket

    @property
    def market(self) -> FakeMarket:
        return self.server

    def do_GET(self) -> None:
        step = self.market.next_step(self.path)
        # The client may have given up (a timeout test); then there is nobody to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            step(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def market() -> Iterator[FakeMarket]:
    server = FakeMarket()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_source(url: str, **options: object) -> HttpPriceSource:
    settings: dict[str, object] = {
        "clock": FakeClock(NOW),
        "interval_seconds": 0.01,
        "timeout_seconds": CLIENT_TIMEOUT,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "trust_env": False,
        "rng": random.Random(0),
        **options,
    }
    return HttpPriceSource(url, load_catalogue(), **settings)  # type: ignore[arg-type]


GOOD = """[
  {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": 67123.45,
   "high_24h": 68000.5, "low_24h": 66000, "price_change_percentage_24h": -1.23456},
  {"id": "ethereum", "symbol": "eth", "name": "Ethereum", "current_price": 3456.78}
]"""

MIXED = """[
  {"id": "bitcoin", "symbol": "btc", "current_price": null},
  {"id": "ethereum", "symbol": "eth", "current_price": -5},
  {"id": "solana", "symbol": "sol", "current_price": "abc"},
  {"id": "ripple", "symbol": "xrp", "current_price": 1e308},
  {"id": "dogecoin", "symbol": "doge", "current_price": 0},
  {"id": "tron", "symbol": "trx", "current_price": NaN},
  {"id": "avalanche-2", "symbol": "avax", "current_price": Infinity},
  {"id": "chainlink", "symbol": "link", "current_price": 0.0001},
  {"id": "polkadot", "symbol": "dot", "current_price": true},
  {"id": "cardano", "symbol": "ada", "current_price": 0.4567},
  {"id": "some-other-coin", "symbol": "xyz", "current_price": 1.0},
  {"symbol": "LTC", "current_price": 82.5},
  {"id": ["not", "a", "string"], "symbol": "bch", "current_price": 470},
  "not an object",
  42
]"""

GOOD_AGAIN = """[{"id": "bitcoin", "symbol": "btc", "current_price": 67200.5}]"""

BAD_STEPS: list[tuple[Step, str]] = [
    (stall(CLIENT_TIMEOUT * 3), "no answer within"),
    (reply('{"error": "boom"}', status=500), "HTTP 500"),
    (reply("<html>Bad gateway</html>", content_type="text/html"), "not JSON"),
    (reply('{"error": "rate limited", "status": {"error_code": 429}}'), "expected a JSON list"),
    (reply("[]"), "no usable prices"),
]


def prices(batch: list[Tick]) -> dict[str, Decimal]:
    return {t.asset_id: t.price for t in batch}


async def test_a_good_payload_becomes_exact_ticks_stamped_by_our_clock(market: FakeMarket) -> None:
    market.script(reply(GOOD))
    source = make_source(market.url)
    try:
        batch = await source.poll()
    finally:
        await source.close()

    assert batch == [Tick("BTC", Decimal("67123.45"), NOW), Tick("ETH", Decimal("3456.78"), NOW)]
    assert str(batch[0].price) == "67123.45"
    btc = source.market_data["BTC"]
    assert (btc.high_24h, btc.low_24h) == (Decimal("68000.5"), Decimal(66000))
    assert btc.price_change_percentage_24h == Decimal("-1.23456")
    assert source.market_data["ETH"].high_24h is None


async def test_the_request_asks_for_every_catalogue_coin_in_usd(market: FakeMarket) -> None:
    market.script(reply(GOOD))
    source = make_source(market.url)
    try:
        await source.poll()
    finally:
        await source.close()

    request = urlsplit(market.requests[0])
    query = parse_qs(request.query)
    assert request.path == "/api/v3/coins/markets"
    assert query["vs_currency"] == ["usd"]
    assert query["per_page"] == ["250"]
    assert set(query["ids"][0].split(",")) == {a.coingecko_id for a in load_catalogue()}


async def test_a_url_that_already_names_the_endpoint_is_used_as_is(market: FakeMarket) -> None:
    market.script(reply(GOOD))
    source = make_source(market.url + "/coins/markets/")
    try:
        await source.poll()
    finally:
        await source.close()

    assert urlsplit(market.requests[0]).path == "/api/v3/coins/markets"


async def test_each_bad_answer_is_a_failed_poll_not_a_crash(market: FakeMarket) -> None:
    market.script(*(step for step, _ in BAD_STEPS), reply(GOOD_AGAIN))
    source = make_source(market.url)
    try:
        for _, reason in BAD_STEPS:
            with pytest.raises(PricePollFailed, match=reason):
                await source.poll()
        recovered = await source.poll()
    finally:
        await source.close()

    assert recovered == [Tick("BTC", Decimal("67200.5"), NOW)]


async def test_only_valid_positive_finite_plausible_prices_become_ticks(
    market: FakeMarket, caplog: pytest.LogCaptureFixture
) -> None:
    market.script(reply(MIXED))
    source = make_source(market.url)
    try:
        batch = await source.poll()
    finally:
        await source.close()

    assert prices(batch) == {"ADA": Decimal("0.4567"), "LTC": Decimal("82.5")}
    messages = [r.getMessage() for r in caplog.records]
    ignored = {m.split()[4] for m in messages if "current_price" in m}
    assert ignored == {"BTC", "ETH", "SOL", "XRP", "DOGE", "TRX", "AVAX", "LINK", "DOT"}
    assert "http price source: ignored 3 malformed entries" in messages  # BCH's list id, "not an object", 42


async def test_the_stream_rides_out_failures_and_recovers(market: FakeMarket) -> None:
    market.script(
        reply(GOOD),
        *(step for step, _ in BAD_STEPS),
        reply(MIXED),
        reply(GOOD_AGAIN),
    )
    source = make_source(market.url)
    batches: list[list[Tick]] = []
    try:
        async with asyncio.timeout(15):
            async for batch in source.ticks():
                batches.append(batch)
                if len(batches) == 3:
                    break
    finally:
        await source.close()

    assert [prices(b) for b in batches] == [
        {"BTC": Decimal("67123.45"), "ETH": Decimal("3456.78")},
        {"ADA": Decimal("0.4567"), "LTC": Decimal("82.5")},
        {"BTC": Decimal("67200.5")},
    ]
    assert all(isinstance(t.price, Decimal) for b in batches for t in b)
    assert source.consecutive_failures == 0
    assert len(market.requests) == 1 + len(BAD_STEPS) + 2


async def test_a_429_passes_on_the_servers_retry_after(market: FakeMarket) -> None:
    market.script(reply("[]", status=429, Retry_After="7"))
    source = make_source(market.url)
    try:
        with pytest.raises(PricePollFailed, match="HTTP 429") as raised:
            await source.poll()
    finally:
        await source.close()

    assert raised.value.retry_after == 7.0


async def test_an_oversized_body_is_refused(market: FakeMarket) -> None:
    market.script(reply(GOOD))
    source = make_source(market.url, max_body_bytes=64)
    try:
        with pytest.raises(PricePollFailed, match="larger than 64 bytes"):
            await source.poll()
    finally:
        await source.close()


async def test_an_unreachable_server_is_a_failed_poll() -> None:
    source = make_source("http://127.0.0.1:9/api/v3")
    try:
        with pytest.raises(PricePollFailed, match=r"request failed|no answer"):
            await source.poll()
    finally:
        await source.close()


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(1)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0), (10_000, 60.0)]:
        delay = backoff_delay(failures, initial=1.0, cap=60.0, rng=rng)
        assert base / 2 <= delay <= base


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://api.coingecko.com/api/v3", "https://api.coingecko.com/api/v3/coins/markets"),
        ("https://api.coingecko.com/api/v3/", "https://api.coingecko.com/api/v3/coins/markets"),
        ("http://127.0.0.1:8000/coins/markets", "http://127.0.0.1:8000/coins/markets"),
    ],
)
def test_the_markets_endpoint_is_derived_from_the_url(url: str, endpoint: str) -> None:
    assert markets_endpoint(url) == endpoint


@pytest.mark.parametrize("url", ["ftp://example.test", "127.0.0.1:8000", ""])
def test_a_non_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        markets_endpoint(url)
