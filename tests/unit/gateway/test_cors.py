"""CORS from configuration, outside the rate limiter so that browsers can read a 429."""

from __future__ import annotations

from starlette.testclient import TestClient

from .conftest import build_app, make_settings

ORIGIN = "https://app.example"


def test_no_cors_headers_unless_origins_are_configured() -> None:
    gateway = build_app()
    with TestClient(gateway.app) as client:
        response = client.get("/api/v1/ping", headers={"Origin": ORIGIN})

    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_preflight_from_an_allowed_origin_is_answered_with_the_gateway_headers() -> None:
    gateway = build_app(make_settings(cors_origins=[ORIGIN]))
    with TestClient(gateway.app) as client:
        response = client.options(
            "/api/v1/balance/deposit",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    assert "X-Request-ID" in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_429_is_readable_by_the_browser() -> None:
    gateway = build_app(make_settings(cors_origins=[ORIGIN], rate_limit_per_ip="1/minute"))
    with TestClient(gateway.app) as client:
        client.get("/api/v1/ping", headers={"Origin": ORIGIN})
        refused = client.get("/api/v1/ping", headers={"Origin": ORIGIN})

    assert refused.status_code == 429
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = refused.headers["Access-Control-Expose-Headers"]
    for header in ("X-Request-ID", "X-RateLimit-Remaining", "Retry-After"):
        assert header in exposed
