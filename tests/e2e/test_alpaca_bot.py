"""A bot written for Alpaca, through alpaca-py itself, against a real `cnop serve` on 127.0.0.1."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from pathlib import Path

import httpx2 as httpx
import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, CryptoLatestQuoteRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetAssetsRequest, GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from ulid import ULID

from tests.support.cnop_server import CNOP, cnop_serve
from tests.support.wire import read, usd

pytestmark = pytest.mark.system

PASSWORD = "Str0ng!Passw0rd"


def test_an_alpaca_py_bot_trades_against_cnop_serve_and_the_books_agree(tmp_path: Path) -> None:
    with cnop_serve(tmp_path, CNOP_PRICE_TICK_SECONDS="0.2") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        user = {
            "username": "alpaca_bot",
            "email": "bot@example.com",
            "password": PASSWORD,
            "first_name": "Robo",
            "last_name": "Trader",
        }
        assert http.post("/api/v1/auth/register", json=user).status_code == 201
        token = read(http.post("/api/v1/auth/login", json={"username": "alpaca_bot", "password": PASSWORD}))
        native = {"Authorization": f"Bearer {token['access_token']}"}
        assert http.post("/api/v1/balance/deposit", json={"amount": "5000.00"}, headers=native).status_code == 201
        created = read(http.post("/api/v1/auth/api-keys", json={"label": "alpaca bot"}, headers=native))
        key_id, secret = created["key_id"], created["secret"]

        # --- the bot: alpaca-py, unchanged, pointed at cnop ---------------------------------
        trading = TradingClient(key_id, secret, url_override=f"{server.url}/alpaca")
        data = CryptoHistoricalDataClient(url_override=f"{server.url}/alpaca")

        account = trading.get_account()
        assert account.status.value == "ACTIVE" and account.cash == "5000.00" and account.buying_power == "5000.00"

        assets = trading.get_all_assets(GetAssetsRequest(asset_class=AssetClass.CRYPTO, status=AssetStatus.ACTIVE))
        assert "BTC/USD" in {a.symbol for a in assets}
        btc = trading.get_asset("BTC/USD")
        assert btc.asset_class is AssetClass.CRYPTO and btc.tradable and btc.fractionable

        quote = data.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols="BTC/USD"))["BTC/USD"]
        assert quote.ask_price > 0 and quote.bid_price == quote.ask_price
        bars = data.get_crypto_bars(
            CryptoBarsRequest(
                symbol_or_symbols="BTC/USD",
                timeframe=TimeFrame.Minute,
                start=datetime.now(UTC) - timedelta(minutes=10),
            )
        )
        assert bars["BTC/USD"] and bars["BTC/USD"][-1].close > 0
        assert not bars.df.empty  # the SDK's pandas view works too

        buy = trading.submit_order(
            MarketOrderRequest(
                symbol="BTC/USD",
                qty=0.01,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                client_order_id="bot-buy-1",
            )
        )
        assert buy.status is OrderStatus.FILLED and buy.qty == "0.01" and buy.filled_qty == "0.01"
        assert trading.get_order_by_id(buy.id) == buy
        assert trading.get_order_by_client_id("bot-buy-1") == buy

        position = trading.get_open_position("BTC/USD")
        assert position.symbol == "BTCUSD" and position.qty == "0.01"
        assert trading.get_open_position("BTCUSD") == position
        cost = (Decimal(buy.filled_avg_price) * Decimal("0.01")).quantize(Decimal("0.01"), rounding=ROUND_UP)
        assert Decimal(position.cost_basis) == cost  # the buyer pays the arithmetic rounded up to the cent

        limit_price = round(quote.ask_price * 0.5, 2)
        resting = trading.submit_order(
            LimitOrderRequest(
                symbol="BTC/USD",
                qty=0.001,
                side=OrderSide.BUY,
                limit_price=limit_price,
                time_in_force=TimeInForce.GTC,
            )
        )
        assert resting.status is OrderStatus.NEW
        open_orders = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
        assert [o.id for o in open_orders] == [resting.id]
        trading.cancel_order_by_id(resting.id)
        assert trading.get_order_by_id(resting.id).status is OrderStatus.CANCELED

        sell = trading.close_position("BTC/USD")
        assert sell.side is OrderSide.SELL and sell.qty == "0.01" and sell.status is OrderStatus.FILLED
        assert trading.get_all_positions() == []

        with pytest.raises(APIError) as missing:
            trading.get_order_by_id(uuid.uuid4())
        assert missing.value.code == 40410000 and missing.value.status_code == 404
        with pytest.raises(APIError) as refused:
            TradingClient(key_id, "x" * 43, url_override=f"{server.url}/alpaca").get_account()
        assert refused.value.code == 40110000 and refused.value.status_code == 401

        # --- the native API sees the same orders and the same ledger --------------------------
        orders = read(http.get("/api/v1/orders?status=all", headers=native))["data"]
        assert [(o["order_type"], o["status"]) for o in orders] == [
            ("market_sell", "completed"),
            ("limit_buy", "cancelled"),
            ("market_buy", "completed"),
        ]
        assert orders[2]["client_order_id"] == "bot-buy-1"
        assert [str(o.id) for o in (sell, resting, buy)] == [
            str(ULID.from_str(o["order_id"]).to_uuid()) for o in orders
        ]
        ledger = read(http.get("/api/v1/balance/transactions", headers=native))["transactions"]
        assert [e["transaction_type"] for e in ledger] == [
            "order_proceeds",
            "order_release",
            "order_hold",
            "order_payment",
            "deposit",
        ]
        balance = read(http.get("/api/v1/balance", headers=native))
        paid = usd(ledger[3]["amount"])
        received = usd(ledger[0]["amount"])
        assert usd(balance["current_balance"]) == Decimal("5000.00") - paid + received
        assert usd(balance["held_balance"]) == 0
        http.close()

    audit = subprocess.run(
        [CNOP, "audit", "--store", server.store], capture_output=True, text=True, timeout=120, check=False
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "all invariants hold" in audit.stdout
