"""The gateway of the cloud shape (`cnop serve gateway`): the only public entry, proxying to services.

At the edge it does what the local app does for itself (request ids, trusted-proxy client
addresses, security headers, CORS, per-IP and per-user rate limits, metrics) and one thing more:
a request to a protected path without a token that verifies is refused with 401 here, before
it costs a service anything. Services verify every token again themselves (and check
revocation in the store); the gateway's check is a filter, not the authority.

`/health` aggregates the readiness of every upstream (a failing one makes it `degraded`, never
unhealthy: a gateway that can still serve other services must stay in the load balancer);
`/health/ready` is the gateway's own readiness, false while it drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from cnop import __version__
from cnop.common.config import Settings
from cnop.common.exceptions import AuthenticationRequired, CnopError
from cnop.common.health import CheckFailed, HealthCheck, health_router
from cnop.common.logging import configure_logging
from cnop.common.metrics import Metrics, metrics_router
from cnop.common.security import TokenClaims, TokenManager
from cnop.common.shared.redis import add_redis_health, connection_url, watch_redis
from cnop.common.web.problems import install_exception_handlers, scope_problem_response
from cnop.common.web.routing import NATIVE_TELEMETRY_OFF
from cnop.gateway.alpaca import AlpacaErrorShape
from cnop.gateway.middleware import install_middleware
from cnop.gateway.proxy import ReverseProxy, Upstream
from cnop.gateway.upstreams import RouteTable
from cnop.roles import PUBLIC_PREFIXES, ROUTES

_READY_TIMEOUT_SECONDS = 2.0


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _token_identifier(tokens: TokenManager) -> Callable[[Scope], str | None]:
    """Verifies the bearer token once per request (signature, claims, expiry), for limits and the edge check."""

    def identify(scope: Scope) -> str | None:
        token = _bearer(scope)
        if token is None:
            return None
        try:
            claims = tokens.verify_access_token(token)
        except CnopError:
            return None
        scope.setdefault("state", {})["token_claims"] = claims
        return claims.sub

    return identify


class EdgeAuthentication:
    """401 at the edge for a routed, protected path without a token that verifies.

    A path is public when a public prefix of the role it is routed to covers it.
    """

    def __init__(self, app: ASGIApp, tokens: TokenManager, public_prefixes: dict[str, tuple[str, ...]]) -> None:
        self.app = app
        self._identify = _token_identifier(tokens)
        self._public = public_prefixes
        self._routes = RouteTable(ROUTES)

    def _needs_token(self, path: str) -> bool:
        route = self._routes.match(path)
        if route is None:
            return False

        def under(prefix: str) -> bool:
            return path == prefix or path.startswith(prefix.rstrip("/") + "/")

        return not any(under(p) for p in self._public.get(route.upstream, ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self._needs_token(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not isinstance(state.get("token_claims"), TokenClaims) and self._identify(scope) is None:
            detail = "A valid bearer token is required" if _bearer(scope) else AuthenticationRequired.title
            response = scope_problem_response(
                scope,
                AuthenticationRequired.status,
                "invalid_token" if _bearer(scope) else AuthenticationRequired.code,
                AuthenticationRequired.title,
                detail,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _upstream_ready(upstream: Upstream) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        try:
            response = await upstream.client.get(
                upstream.url_for(b"/health/ready", b""), timeout=_READY_TIMEOUT_SECONDS
            )
        except Exception as exc:
            raise CheckFailed("not reachable") from exc
        if response.status_code != 200:
            raise CheckFailed("not ready")

    return check


def create_gateway_app(settings: Settings) -> FastAPI:
    """The cloud gateway: edge middleware around the reverse proxy, plus its own health and metrics."""
    settings = settings.model_copy(update={"shape": "cloud"})
    configure_logging(settings)
    metrics = Metrics()
    tokens = TokenManager(settings)
    draining = asyncio.Event()
    proxy = ReverseProxy.from_settings(settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_url = connection_url(settings)
        watcher = asyncio.create_task(watch_redis(redis_url, metrics)) if redis_url else None
        try:
            yield
        finally:
            draining.set()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await proxy.aclose()

    app = FastAPI(
        title="cnop gateway",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        telemetry=NATIVE_TELEMETRY_OFF,
    )
    app.state.draining = draining
    app.state.proxy = proxy
    app.state.metrics = metrics
    install_exception_handlers(app)

    async def not_draining() -> None:
        if draining.is_set():
            raise CheckFailed("shutting down")

    health = HealthCheck(service="cnop-gateway", version=__version__, default_timeout=_READY_TIMEOUT_SECONDS + 0.5)
    for name, upstream in sorted(proxy.upstreams.items()):
        health.add(f"upstream:{name}", _upstream_ready(upstream), critical=False, readiness=False)
    add_redis_health(health, settings)
    health.add("draining", not_draining, liveness=False, readiness=True)
    app.include_router(health_router(health))

    if settings.metrics_enabled:
        app.router.routes.extend(metrics_router(metrics).routes)

    app.router.routes.append(Mount("", app=proxy))
    app.add_middleware(EdgeAuthentication, tokens=tokens, public_prefixes=PUBLIC_PREFIXES)
    install_middleware(app, settings, metrics, _token_identifier(tokens))
    # Outermost, so that the gateway's own refusals under /alpaca (429, 503) take Alpaca's shape too.
    app.add_middleware(AlpacaErrorShape)
    return app
