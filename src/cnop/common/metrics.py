"""Prometheus metrics: one `Metrics` object per app, each with its own registry.

Labels are kept to bounded sets: the route label is the route template
(`/api/v1/orders/{order_id}`) or `unmatched`, never a raw path, and unknown HTTP methods are
counted as `OTHER`; a client can never create new time series by sending odd requests.
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response

UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; an API call here is milliseconds, a slow one (password hashing) a few hundred.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "OTHER"


class Metrics:
    """The application's metrics and the registry that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ("method", "route"),
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.orders = Counter(
            "orders", "Orders by type and resulting status.", ("order_type", "status"), registry=self.registry
        )
        self.trades_value_usd = Counter(
            "trades_value_usd", "Total value of executed trades in US dollars.", registry=self.registry
        )
        self.ledger_entries = Counter(
            "ledger_entries", "Ledger entries written, by type.", ("type",), registry=self.registry
        )
        self.login_attempts = Counter(
            "login_attempts",
            "Login attempts by result (success, failure, blocked).",
            ("result",),
            registry=self.registry,
        )
        # Resolved label children, so the hot path is one dict lookup instead of `.labels()`.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, duration_seconds: float) -> None:
        """Count one answered HTTP request; `route` must be a template or `UNMATCHED_ROUTE`."""
        key = (_method_label(method), route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(key[0], route, str(status)),
                self.http_request_duration.labels(key[0], route),
            )
            self._request_children[key] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(duration_seconds)

    def record_order(self, order_type: str, status: str) -> None:
        self.orders.labels(order_type, status).inc()

    def record_trade(self, value_usd: Decimal) -> None:
        # A float is fine here: this is a gauge of activity, not money anyone is owed.
        self.trades_value_usd.inc(float(value_usd))

    def record_ledger_entry(self, entry_type: str) -> None:
        self.ledger_entries.labels(entry_type).inc()

    def record_login(self, result: str) -> None:
        self.login_attempts.labels(result).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in this registry."""
        return generate_latest(self.registry)

    def metrics_response(self) -> Response:
        return Response(self.render(), media_type=CONTENT_TYPE_LATEST)


def metrics_router(metrics: Metrics) -> APIRouter:
    """`GET /metrics`, outside the OpenAPI schema."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, response_class=Response)
    async def read_metrics() -> Response:
        return metrics.metrics_response()

    return router
