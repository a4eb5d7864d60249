"""Request id, client address, security headers and the access log."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from cnop.gateway.middleware import TrustedProxies

from .conftest import GatewayApp, build_app, make_settings

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def test_a_sane_request_id_is_echoed_and_bound_for_the_request(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        response = client.get("/api/v1/ping", headers={"X-Request-ID": "abc-123.X:y_z"})
        context = client.get("/api/v1/context", headers={"X-Request-ID": "ctx-1"}).json()

    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc-123.X:y_z"
    assert response.json()["request_id"] == "abc-123.X:y_z"
    assert context["request_id"] == "ctx-1"


def test_a_missing_request_id_is_generated_fresh_for_each_request(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        first = client.get("/api/v1/ping").headers["X-Request-ID"]
        second = client.get("/api/v1/ping").headers["X-Request-ID"]

    assert HEX_ID.match(first)
    assert HEX_ID.match(second)
    assert first != second


@pytest.mark.parametrize("insane", ["has spaces", "a" * 129, "<script>", "id;drop", "", "é"])
def test_an_insane_request_id_is_replaced(gateway: GatewayApp, insane: str) -> None:
    with TestClient(gateway.app) as client:
        response = client.get("/api/v1/ping", headers=[(b"X-Request-ID", insane.encode("utf-8"))])

    assert HEX_ID.match(response.headers["X-Request-ID"])
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_error_responses_carry_the_request_id_in_header_and_body(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        for path in ["/nowhere", "/api/v1/raise/boom", "/api/v1/raise/insufficient"]:
            response = client.get(path, headers={"X-Request-ID": "trace-me"})
            assert response.headers["X-Request-ID"] == "trace-me", path
            assert response.json()["request_id"] == "trace-me", path


REQUESTS = {
    200: ("GET", "/api/v1/ping", None),
    404: ("GET", "/api/v1/nothing-here", None),
    405: ("PUT", "/api/v1/orders/ORD-1234567890", None),
    422: ("POST", "/api/v1/balance/deposit", {"amount": "-1"}),
    500: ("GET", "/api/v1/raise/boom", None),
}


@pytest.mark.parametrize("status", sorted(REQUESTS))
def test_every_response_carries_the_security_headers(gateway: GatewayApp, status: int) -> None:
    method, path, body = REQUESTS[status]
    with TestClient(gateway.app) as client:
        response = client.request(method, path, json=body)

    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert response.headers["Cache-Control"] == "no-store"
    assert "X-Request-ID" in response.headers
    assert "Strict-Transport-Security" not in response.headers


def test_cache_control_is_only_forced_under_api_and_never_overrides_the_app(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        cached = client.get("/api/v1/cached")
        root = client.get("/nowhere")

    assert cached.headers["Cache-Control"] == "max-age=60"
    assert "Cache-Control" not in root.headers
    assert root.headers["X-Frame-Options"] == "DENY"


def test_the_docs_page_gets_a_csp_that_lets_swagger_ui_load(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        docs = client.get("/docs")
        api = client.get("/api/v1/ping")

    assert docs.status_code == 200
    assert "https://cdn.jsdelivr.net" in docs.headers["Content-Security-Policy"]
    assert "cdn.jsdelivr.net" not in api.headers["Content-Security-Policy"]


def test_hsts_is_sent_only_over_https() -> None:
    gateway = build_app()
    with TestClient(gateway.app, base_url="https://testserver") as client:
        secure = client.get("/api/v1/ping")
    with TestClient(gateway.app) as client:
        plain = client.get("/api/v1/ping", headers={"X-Forwarded-Proto": "https"})

    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Strict-Transport-Security" not in plain.headers  # the peer is not a trusted proxy


def test_x_forwarded_proto_counts_only_from_a_trusted_proxy() -> None:
    gateway = build_app(make_settings(trusted_proxies=["10.0.0.0/8"]))
    with TestClient(gateway.app, client=("10.1.2.3", 4000)) as client:
        response = client.get("/api/v1/ping", headers={"X-Forwarded-Proto": "https"})

    assert "Strict-Transport-Security" in response.headers


# --- client address ---------------------------------------------------------------------------


def client_ip(gateway: GatewayApp, peer: str, forwarded_for: str | None = None) -> str:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    with TestClient(gateway.app, client=(peer, 4000)) as client:
        return str(client.get("/api/v1/ping", headers=headers).json()["client_ip"])


def test_the_peer_is_the_client_when_no_proxy_is_trusted(gateway: GatewayApp) -> None:
    assert client_ip(gateway, "203.0.113.7", "198.51.100.9") == "203.0.113.7"


def test_x_forwarded_for_is_ignored_when_the_peer_is_not_a_trusted_proxy() -> None:
    gateway = build_app(make_settings(trusted_proxies=["10.0.0.0/8"]))
    assert client_ip(gateway, "203.0.113.7", "198.51.100.9") == "203.0.113.7"


def test_x_forwarded_for_is_walked_from_the_right_past_trusted_proxies() -> None:
    gateway = build_app(make_settings(trusted_proxies=["10.0.0.0/8", "192.168.1.1"]))

    assert client_ip(gateway, "10.0.0.1", "198.51.100.9") == "198.51.100.9"
    assert client_ip(gateway, "10.0.0.1", "198.51.100.9, 192.168.1.1, 10.9.9.9") == "198.51.100.9"
    # A client-supplied hop to the left of the real one is not believed.
    assert client_ip(gateway, "10.0.0.1", "6.6.6.6, 198.51.100.9") == "198.51.100.9"
    # No header: the proxy itself.
    assert client_ip(gateway, "10.0.0.1") == "10.0.0.1"


def test_trusted_proxies_handle_odd_hops() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])

    assert proxies.client_ip("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"  # all trusted: leftmost
    assert proxies.client_ip("10.0.0.1", "garbage, 10.0.0.3") == "10.0.0.3"  # stop at nonsense
    assert proxies.client_ip("10.0.0.1", "198.51.100.9:5555") == "198.51.100.9"
    assert proxies.client_ip("10.0.0.1", "[2001:db9::1]:443") == "2001:db9::1"
    assert proxies.client_ip("2001:db8::5", "::ffff:198.51.100.9") == "198.51.100.9"
    assert proxies.client_ip("203.0.113.7", "198.51.100.9") == "203.0.113.7"
    assert proxies.client_ip(None, "198.51.100.9") == "unknown"
    assert not TrustedProxies([])


# --- access log -------------------------------------------------------------------------------


def test_one_access_line_per_request_with_route_template_status_and_ids(gateway: GatewayApp) -> None:
    with capture_logs() as logs, TestClient(gateway.app, client=("203.0.113.7", 4000)) as client:
        client.get("/api/v1/orders/ORD-1234567890", headers={"X-Request-ID": "req-42"})

    access = [entry for entry in logs if entry["event"] == "request"]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/orders/{order_id}"
    assert line["path"] == "/api/v1/orders/ORD-1234567890"
    assert line["status"] == 200
    assert line["client_ip"] == "203.0.113.7"
    assert isinstance(line["duration_ms"], float)
    assert line["log_level"] == "info"


def test_the_user_bound_by_the_auth_layer_is_in_later_logs_and_the_access_line(gateway: GatewayApp) -> None:
    with capture_logs() as logs, TestClient(gateway.app) as client:
        context = client.get("/api/v1/whoami", headers={"X-Request-ID": "req-43"}).json()

    assert context == {"request_id": "req-43", "user": "alice"}
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert line["user"] == "alice"
