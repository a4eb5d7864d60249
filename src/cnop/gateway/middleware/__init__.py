"""The gateway's middleware, one per module: request context, metrics, CORS, rate limits, errors.

All of it is plain ASGI (no `BaseHTTPMiddleware`): it runs on every request, so everything that
can be worked out once is worked out in the constructors. `install_middleware` stacks it, from
the outside in:

    RequestContextMiddleware   request_context.py: request id, client ip, security headers,
                               access log
    MetricsMiddleware          metrics.py: Prometheus request count and latency by route template
    CORSMiddleware             Starlette's; only when `cors_origins` is set; outside the limiter,
                               so that a browser can read a 429
    RateLimitMiddleware        rate_limit.py: per-IP and per-user fixed windows, X-RateLimit-*
                               headers, 429
    BodyLimitMiddleware        body_limit.py: bodies over the route's bound are 413 unread
    UnhandledErrorMiddleware   errors.py: turns an unexpected exception into the generic 500
    (FastAPI's exception handlers and the routes)

Because the request context is outermost and the error guard innermost, every response,
429s and 500s included, carries the request id, the security headers and the rate headers.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from cnop.common.config import Settings
from cnop.common.counters import CounterStore, MemoryCounters, counter_store
from cnop.common.metrics import Metrics
from cnop.gateway.client_ip import TrustedProxies
from cnop.gateway.middleware.body_limit import BodyLimitMiddleware
from cnop.gateway.middleware.errors import UnhandledErrorMiddleware
from cnop.gateway.middleware.metrics import MetricsMiddleware
from cnop.gateway.middleware.rate_limit import (
    RATE_LIMIT_EXEMPT_PATHS,
    RATE_LIMIT_HEADERS,
    RateLimitMiddleware,
    UserIdentifier,
)
from cnop.gateway.middleware.request_context import REQUEST_ID_HEADER, RequestContextMiddleware
from cnop.gateway.routes import route_template

__all__ = [
    "RATE_LIMIT_EXEMPT_PATHS",
    "RATE_LIMIT_HEADERS",
    "REQUEST_ID_HEADER",
    "BodyLimitMiddleware",
    "CounterStore",
    "MemoryCounters",
    "MetricsMiddleware",
    "RateLimitMiddleware",
    "RequestContextMiddleware",
    "TrustedProxies",
    "UnhandledErrorMiddleware",
    "UserIdentifier",
    "counter_store",
    "install_middleware",
    "route_template",
]

AUTH_PATH_PREFIX = "/api/v1/auth/"


def install_middleware(
    app: FastAPI,
    settings: Settings,
    metrics: Metrics | None = None,
    identify_user: UserIdentifier | None = None,
    *,
    rate_limit_storage: CounterStore | None = None,
) -> None:
    """Add the gateway's middleware to `app` in the order the module docstring shows.

    Rate limiting is skipped entirely (no counting and no X-RateLimit-* headers) when
    `rate_limit_enabled` is false; that breaks the API rule that every response carries the
    headers, so it is for benchmarks and trusted internal deployments. To keep the headers with
    no practical limit, leave it enabled and raise `rate_limit_per_ip`/`rate_limit_per_user`.
    Metrics are observed when `metrics` is given and `metrics_enabled` is true.
    """
    # add_middleware wraps what is already there, so add from the innermost outwards.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_body_bytes,
        limits_by_prefix=[(AUTH_PATH_PREFIX, settings.max_auth_body_bytes)],
    )
    if settings.rate_limit_enabled:
        app.add_middleware(
            RateLimitMiddleware, settings=settings, identify_user=identify_user, storage=rate_limit_storage
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, *RATE_LIMIT_HEADERS],
            max_age=600,
        )
    if metrics is not None and settings.metrics_enabled:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, settings=settings)
