"""The gateway: one ASGI app composing every service under /api/v1 (the local shape)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import Scope

from cnop import __version__
from cnop.common.config import Settings, get_settings
from cnop.common.exceptions import CnopError
from cnop.common.health import HealthCheck, health_router
from cnop.common.logging import configure_logging
from cnop.common.metrics import metrics_router
from cnop.common.shared.redis import add_redis_health
from cnop.common.web.problems import install_exception_handlers
from cnop.common.web.routing import NATIVE_TELEMETRY_OFF, install_route_index
from cnop.container import Container, build_container
from cnop.gateway.alpaca import AlpacaErrorShape, mount_alpaca
from cnop.gateway.middleware import install_middleware
from cnop.services.admin_api import router as admin_router
from cnop.services.dependencies import bearer_token
from cnop.services.events_api import router as events_router
from cnop.services.insights.api import router as insights_router
from cnop.services.inventory.api import router as inventory_router
from cnop.services.order.api import router as order_router
from cnop.services.user.api import router as user_router
from cnop.services.user.jwks_api import router as jwks_router
from cnop.services.web.app import install_web

log = structlog.get_logger("cnop.gateway")


def _identify_user(container: Container) -> Callable[[Scope], str | None]:
    """The verified subject of the request's bearer token, for per-user rate limits."""

    def identify(scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                try:
                    claims = container.tokens.verify_access_token(bearer_token(value.decode("latin-1")))
                except (CnopError, UnicodeDecodeError):
                    return None
                scope.setdefault("state", {})["token_claims"] = claims
                return claims.sub
        return None

    return identify


def _price_feed_check(container: Container) -> Callable[[], Awaitable[None]]:
    """Ready when at least one asset has a price fresh enough to trade on."""

    async def check() -> None:
        last = container.price_book.last_applied_at
        age = (container.clock.now() - last).total_seconds() if last else None
        if age is None or age > container.settings.max_price_age_seconds:
            raise RuntimeError("no fresh price")

    return check


def create_app(
    settings: Settings | None = None,
    *,
    container: Container | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    container = container or build_container(settings)
    if getattr(container.tokens, "generated_secret", False):
        log.warning("jwt_secret_generated", detail="CNOP_JWT_SECRET is not set; tokens end with this process")
    elif (secret_file := getattr(container.tokens, "secret_file", None)) is not None:
        log.info("jwt_secret_from_file", path=str(secret_file))
    if container.api_keys.hasher.generated_key:
        log.warning(
            "api_key_secret_generated",
            detail="neither CNOP_API_KEY_SECRET nor CNOP_JWT_SECRET is set; API keys end with this process",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await container.store.create_tables()
        for startup in container.startup:
            await startup()
        running: list[asyncio.Task[None]] = [asyncio.create_task(task()) for task in container.background]
        try:
            yield
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await container.events.close()
            await container.store.close()
            if container.redis is not None:
                await container.redis.close()

    app = FastAPI(
        title="Cloud Native Order Processor",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        telemetry=NATIVE_TELEMETRY_OFF,
    )
    app.state.container = container
    app.state.draining = asyncio.Event()
    install_exception_handlers(app)

    health = HealthCheck(
        service="cnop-gateway", version=__version__, liveness_cache_seconds=settings.health_cache_seconds
    )
    health.add("store", container.store.ping, critical=True, readiness=True)
    health.add("prices", _price_feed_check(container), critical=False, readiness=True)
    add_redis_health(health, settings, lambda: container.invalidations.connected)
    # Flat on the app, as the services' routes below: an included router costs a level of
    # matching bookkeeping on every request that reaches it.
    app.router.routes.extend(health_router(health).routes)

    if settings.metrics_enabled:
        app.router.routes.extend(metrics_router(container.metrics).routes)

    # Routes go straight onto the app, hottest first: FastAPI matches candidates one by one, and
    # each included router adds a level of bookkeeping per request (measured: routing was over
    # half of a request's framework cost with nested routers).
    for router in (
        order_router,
        user_router,
        inventory_router,
        insights_router,
        events_router,
        admin_router,
        jwks_router,
    ):
        app.router.routes.extend(router.routes)
    mount_alpaca(app, container)
    install_web(app, container)
    install_middleware(
        app, settings, container.metrics, _identify_user(container), rate_limit_storage=container.counters
    )
    # Outermost, so that it sees every answer under /alpaca, the middleware's own refusals included.
    app.add_middleware(AlpacaErrorShape)
    _docs_last(app)
    install_route_index(app)
    return app


def _docs_last(app: FastAPI) -> None:
    """Move FastAPI's own routes (the OpenAPI document, the docs pages) behind the others.

    FastAPI puts them first; every request is matched against the routes in order, and these
    are asked for least. No other route's path overlaps theirs, so the order changes no answer.
    """
    own = {app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url} - {None}
    first = [route for route in app.router.routes if getattr(route, "path", None) not in own]
    app.router.routes[:] = first + [route for route in app.router.routes if getattr(route, "path", None) in own]


def create_default_app() -> Any:
    """Entry point for `uvicorn --factory cnop.gateway.app:create_default_app`."""
    return create_app()
