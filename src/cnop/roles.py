"""The cloud shape's roles: what `cnop serve <role>` runs, one line per role in `ROLES`.

A role is one service as its own process: only its routes, its own `/health`, `/health/ready`
(checking what it really needs) and `/metrics`, and the background work it owns. Every role
shares the store through the common package; none calls another's API. The gateway routes each
role's prefixes to it (`ROUTES`, derived from `ROLES`), so adding a role, or a prefix to a role,
is one line here. The gateway itself is a role too, built by `cnop.gateway.cloud`.

Without Redis each role that values money keeps its own price book fed by its own price source
(with the simulated source and one seed they agree). With `CNOP_REDIS_URL` every role's book
follows one shared price stream, and only roles with `price_publisher` (the workers) compete for
the price lease that lets one of them run the source (`cnop.market.bus`, `cnop.market.leader`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI

from cnop import __version__
from cnop.common.config import Settings
from cnop.common.health import CheckFailed, HealthCheck, health_router
from cnop.common.logging import configure_logging, get_logger
from cnop.common.metrics import metrics_router
from cnop.common.shared.redis import add_redis_health
from cnop.common.web.problems import install_exception_handlers
from cnop.common.web.routing import NATIVE_TELEMETRY_OFF
from cnop.container import Container, build_container
from cnop.gateway.alpaca import AlpacaErrorShape, mount_alpaca
from cnop.gateway.middleware import install_middleware
from cnop.gateway.upstreams import DEFAULT_TIMEOUT_SECONDS, Route
from cnop.services.admin_api import router as admin_router
from cnop.services.events_api import router as events_router
from cnop.services.insights.api import router as insights_router
from cnop.services.inventory.api import router as inventory_router
from cnop.services.order.api import router as order_router
from cnop.services.user.api import router as user_router
from cnop.services.user.jwks_api import router as jwks_router
from cnop.services.web.app import install_web

_log = get_logger("cnop.roles")


@dataclass(frozen=True, slots=True)
class Role:
    """One service of the cloud shape.

    `prefixes` are the paths the gateway sends to it; `streams` among them have no read timeout
    (event streams); `timeout` is the gateway's read timeout for the others; `public` are the
    paths under them that need no token (everything else does, and the gateway checks it).
    `trigger_engine` runs the engine in this process; `price_publisher` lets it compete for the
    price lease (with Redis); `prices` says whether its readiness needs a fresh price.
    """

    name: str
    summary: str
    routers: tuple[APIRouter, ...] = ()
    prefixes: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    public: tuple[str, ...] = ()
    trigger_engine: bool = False
    price_publisher: bool = False
    prices: bool = True
    #: Anything else the role's app serves (a mounted sub-application), added last.
    extend: Callable[[FastAPI, Container], None] | None = None

    def routes(self) -> tuple[Route, ...]:
        return tuple(Route(p, self.name, None if p in self.streams else self.timeout) for p in self.prefixes)


def _alpaca(app: FastAPI, container: Container) -> None:
    """The Alpaca-compatible API, trading through the order service's use cases, in Alpaca's error shape."""
    mount_alpaca(app, container)
    app.add_middleware(AlpacaErrorShape)


# The web app's pages and static files; "/" alone is the markets page.
WEB_PREFIXES = ("/", "/login", "/signup", "/logout", "/dashboard", "/assets", "/orders", "/ledger",
                "/ledger.csv", "/cash", "/profile", "/admin", "/static")  # fmt: skip
GATEWAY = "gateway"
# fmt: off
ROLES: tuple[Role, ...] = (
    Role("user", "accounts, tokens (the only signer), cash, ledger, portfolio", (user_router, jwks_router),
         ("/api/v1/auth", "/api/v1/balance", "/api/v1/portfolio", "/.well-known/jwks.json"),
         public=("/api/v1/auth/register", "/api/v1/auth/login", "/.well-known/jwks.json")),
    # Alpaca clients authenticate with API keys, which the service checks; the price stream is public.
    Role("order", "orders and their events; the Alpaca-compatible API", (order_router, events_router),
         ("/api/v1/orders", "/api/v1/assets", "/api/v1/events", "/api/v1/prices", "/alpaca"),
         streams=("/api/v1/events", "/api/v1/prices"), public=("/alpaca", "/api/v1/prices"), extend=_alpaca),
    Role("inventory", "assets, prices, admin", (inventory_router, admin_router),
         ("/api/v1/inventory", "/api/v1/admin"), public=("/api/v1/inventory",)),
    Role("insights", "portfolio analysis", (insights_router,), ("/api/v1/insights",), timeout=30.0),
    # The pages sign in with a session cookie, which the web service checks: public at the edge.
    Role("web", "the server-rendered web app", (), WEB_PREFIXES, public=WEB_PREFIXES, extend=install_web),
    Role("worker", "price feed and trigger engine (health and metrics only over HTTP)", trigger_engine=True,
         price_publisher=True),
)
# fmt: on
ROUTES: tuple[Route, ...] = tuple(route for role in ROLES for route in role.routes())
PUBLIC_PREFIXES: dict[str, tuple[str, ...]] = {role.name: role.public for role in ROLES}
ROLE_NAMES: tuple[str, ...] = (GATEWAY, *(role.name for role in ROLES))


def role_named(name: str) -> Role:
    for role in ROLES:
        if role.name == name:
            return role
    raise KeyError(name)


def role_settings(role: Role, settings: Settings) -> Settings:
    """The settings a role runs with: the cloud shape, and the trigger engine only where it belongs."""
    return settings.model_copy(
        update={"shape": "cloud", "trigger_engine": role.trigger_engine, "price_publisher": role.price_publisher}
    )


def fresh_price_check(container: Container) -> Callable[[], Awaitable[None]]:
    """Ready when at least one asset has a price fresh enough to trade on."""

    async def check() -> None:
        last = container.price_book.last_applied_at
        age = (container.clock.now() - last).total_seconds() if last else None
        if age is None or age > container.settings.max_price_age_seconds:
            raise CheckFailed("no fresh price")

    return check


def create_role_app(role: Role, settings: Settings, *, container: Container | None = None) -> FastAPI:
    """The ASGI app of one role: its routes, health, metrics and background tasks, nothing else."""
    settings = role_settings(role, settings)
    configure_logging(settings)
    container = container or build_container(settings)
    draining = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tables and the catalogue are the `cnop db init` job's, not every replica's.
        running = [asyncio.create_task(task()) for task in container.background]
        _log.info("role_started", role=role.name, store=settings.store)
        try:
            yield
        finally:
            draining.set()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await container.events.close()
            await container.store.close()
            if container.redis is not None:
                await container.redis.close()

    app = FastAPI(
        title=f"cnop {role.name}",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=NATIVE_TELEMETRY_OFF,
    )
    app.state.container = container
    app.state.draining = draining
    install_exception_handlers(app)

    async def not_draining() -> None:
        if draining.is_set():
            raise CheckFailed("shutting down")

    health = HealthCheck(
        service=f"cnop-{role.name}", version=__version__, liveness_cache_seconds=settings.health_cache_seconds
    )
    # Not critical: in a cluster /health is the liveness probe, and a store outage must make the
    # pods not-ready (readiness), not restart them all.
    health.add("store", container.store.ping, critical=False, readiness=True)
    if role.prices:
        health.add("prices", fresh_price_check(container), critical=False, readiness=True)
    add_redis_health(health, settings, lambda: container.invalidations.connected)
    health.add("draining", not_draining, liveness=False, readiness=True)
    app.include_router(health_router(health))

    if settings.metrics_enabled:
        app.router.routes.extend(metrics_router(container.metrics).routes)

    for router in role.routers:
        app.router.routes.extend(router.routes)
    # The edge's limits are the gateway's; a service keeps request ids, headers, metrics, errors.
    install_middleware(app, settings.model_copy(update={"rate_limit_enabled": False}), container.metrics)
    if role.extend is not None:
        role.extend(app, container)
    return app
