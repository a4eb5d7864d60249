"""Prometheus metrics labelled by route template."""

from __future__ import annotations

from decimal import Decimal

from starlette.testclient import TestClient

from cnop.common.metrics import Metrics

from .conftest import GatewayApp


def test_requests_are_labelled_by_route_template_not_raw_path(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        client.get("/api/v1/orders/ORD-1111111111")
        client.get("/api/v1/orders/ORD-2222222222")
        client.put("/api/v1/orders/ORD-3333333333")
        client.get("/no/such/route-4444")
        client.request("BREW", "/api/v1/ping")
        text = client.get("/metrics").text

    assert 'cnop_http_requests_total{method="GET",route="/api/v1/orders/{order_id}",status="200"} 2.0' in text
    assert 'cnop_http_requests_total{method="PUT",route="/api/v1/orders/{order_id}",status="405"} 1.0' in text
    assert 'cnop_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'method="OTHER"' in text
    assert 'http_request_duration_seconds_bucket{le="0.1",method="GET",route="/api/v1/orders/{order_id}"}' in text
    for raw in ("ORD-1111111111", "ORD-2222222222", "ORD-3333333333", "route-4444", "BREW"):
        assert raw not in text


def test_a_500_is_counted(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        client.get("/api/v1/raise/boom")
        text = client.get("/metrics").text

    assert 'cnop_http_requests_total{method="GET",route="/api/v1/raise/{name}",status="500"} 1.0' in text


def test_the_metrics_endpoint_speaks_prometheus_text(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE cnop_http_requests_total counter" in response.text


def test_each_metrics_object_has_its_own_registry_and_domain_counters() -> None:
    first, second = Metrics(), Metrics()
    first.record_order("market_buy", "completed")
    first.record_trade(Decimal("1234.56"))
    first.record_ledger_entry("deposit")
    first.record_login("failure")
    text = first.render().decode()

    assert 'cnop_orders_total{order_type="market_buy",status="completed"} 1.0' in text
    assert "cnop_trades_value_usd_total 1234.56" in text
    assert 'cnop_ledger_entries_total{type="deposit"} 1.0' in text
    assert 'cnop_login_attempts_total{result="failure"} 1.0' in text
    assert "market_buy" not in second.render().decode()
