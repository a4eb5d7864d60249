"""The cloud shape's roles: each serves only its routes, the gateway routes every path to its owner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from fastapi.routing import APIRoute
from typer.main import get_command

from cnop.cli import app as cli_app
from cnop.common.config import Settings
from cnop.common.security.token_manager import write_ed25519_key_pair
from cnop.gateway.app import create_app
from cnop.gateway.cloud import create_gateway_app
from cnop.gateway.upstreams import RouteTable
from cnop.roles import GATEWAY, PUBLIC_PREFIXES, ROLE_NAMES, ROLES, ROUTES, create_role_app, role_named

OWN_PATHS = {"/health", "/health/ready", "/metrics"}


def _api_routes(app: object) -> set[tuple[str, str]]:
    routes = getattr(app, "routes", [])
    return {(method, r.path) for r in routes if isinstance(r, APIRoute) for method in r.methods}


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    public = tmp_path / "public"
    if not public.exists():
        write_ed25519_key_pair(tmp_path / "jwt.key", public / "jwt.pem")
    values: dict[str, object] = {
        "store": f"sqlite:///{tmp_path / 'cnop.db'}",
        "jwt_secret": None,
        "jwt_algorithm": "EdDSA",
        "jwt_public_keys_dir": str(public),
        "price_source": "manual",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_every_role_is_a_serve_command() -> None:
    serve = get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    assert set(serve.commands) == set(ROLE_NAMES)
    assert ROLE_NAMES[0] == GATEWAY


def test_every_route_of_the_system_belongs_to_exactly_one_role_and_the_gateway_sends_it_there(tmp_path: Path) -> None:
    local = _api_routes(create_app(_settings(tmp_path, jwt_algorithm="HS256", jwt_public_keys_dir=None)))
    owners: dict[tuple[str, str], list[str]] = {}
    for role in ROLES:
        served = _api_routes(create_role_app(role, _settings(tmp_path)))
        for route in served:
            owners.setdefault(route, []).append(role.name)
    assert {route for route in local if route[1] not in OWN_PATHS} == {r for r in owners if r[1] not in OWN_PATHS}
    table = RouteTable(ROUTES)
    for (method, path), names in owners.items():
        if path in OWN_PATHS:
            continue
        assert len(names) == 1, (method, path, names)
        matched = table.match(path.replace("{", "").replace("}", ""))
        assert matched is not None, path
        assert matched.upstream == names[0], (method, path)


def test_a_role_serves_its_own_routes_only(tmp_path: Path) -> None:
    order = {path for _, path in _api_routes(create_role_app(role_named("order"), _settings(tmp_path)))}
    assert "/api/v1/orders" in order
    assert "/api/v1/events" in order
    assert "/api/v1/auth/login" not in order
    assert "/api/v1/balance/deposit" not in order
    worker = {path for _, path in _api_routes(create_role_app(role_named("worker"), _settings(tmp_path)))}
    assert worker <= OWN_PATHS  # nothing but its own health and metrics


def test_only_the_worker_runs_the_trigger_engine(tmp_path: Path) -> None:
    for role in ROLES:
        app = create_role_app(role, _settings(tmp_path, trigger_engine=True))
        container = app.state.container
        assert container.settings.trigger_engine is (role.name == "worker"), role.name
        assert container.settings.shape == "cloud"


def test_a_role_refuses_to_start_with_hs256(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local shape only"):
        create_role_app(role_named("order"), _settings(tmp_path, jwt_algorithm="HS256", jwt_secret="s" * 64))


@pytest.fixture
async def order_app(tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, object]]:
    app = create_role_app(role_named("order"), _settings(tmp_path))
    async with app.router.lifespan_context(app):
        client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://order")
        yield client, app
        await client.aclose()


async def test_a_role_has_its_own_health_readiness_and_metrics_and_readiness_turns_false_on_drain(
    order_app: tuple[httpx2.AsyncClient, object],
) -> None:
    client, app = order_app
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["service"] == "cnop-order"
    ready = await client.get("/health/ready")
    assert ready.json()["checks"]["store"] == {"status": "ok"}
    assert ready.json()["checks"]["draining"] == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "cnop_http_requests_total" in metrics.text

    app.state.draining.set()  # type: ignore[attr-defined]
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["draining"] == {"status": "fail", "detail": "shutting down"}
    assert (await client.get("/health")).status_code == 200  # alive while it drains


async def test_a_service_verifies_tokens_itself(order_app: tuple[httpx2.AsyncClient, object]) -> None:
    client, _app = order_app
    response = await client.get("/api/v1/orders", headers={"authorization": "Bearer forged.token.here"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_the_gateway_refuses_a_protected_path_without_a_valid_token_at_the_edge(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        # Nothing listens here: a request that got past the edge check would be a 503.
        upstream_urls={name: "http://127.0.0.1:9" for name in ("user", "order", "inventory", "insights", "web")},
        breaker_min_failures=1000,
        upstream_retries=0,
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, client=("203.0.113.5", 40000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
            for path in ("/api/v1/orders", "/api/v1/balance", "/api/v1/auth/profile", "/api/v1/admin/prices"):
                response = await client.get(path)
                assert response.status_code == 401, path
                assert response.json()["code"] == "not_authenticated"
                assert response.headers["x-request-id"]
                assert response.headers["x-ratelimit-limit"]
                forged = await client.get(path, headers={"authorization": "Bearer a.b.c"})
                assert forged.status_code == 401
                assert forged.json()["code"] == "invalid_token"
            # Public paths go through to the service (which is down here: a 503, not a 401).
            for path in ("/api/v1/inventory/assets", "/.well-known/jwks.json", "/dashboard", "/api/v1/prices/stream"):
                response = await client.get(path)
                assert response.status_code == 503, path
                assert response.headers["retry-after"] == "1"
            login = await client.post("/api/v1/auth/login", json={"username": "alice_01", "password": "x"})
            assert login.status_code == 503
            assert set(PUBLIC_PREFIXES["user"]) >= {"/api/v1/auth/login", "/api/v1/auth/register"}
            # Its own health says which upstreams are not ready; it stays alive and ready.
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            assert health.json()["checks"]["upstream:order"] == {"status": "fail", "detail": "not reachable"}
            assert (await client.get("/health/ready")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'cnop_circuit_breaker_state{upstream="order"} 0.0' in metrics
