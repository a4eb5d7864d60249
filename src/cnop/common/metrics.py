"""Prometheus metrics: one `Metrics` object per app, each with its own registry.

Every name starts with `cnop_` (the `NAMESPACE`), so dashboards and alert rules can tell the
project's series from those of the runtime and the cluster.

Labels are kept to bounded sets: the route label is the route template
(`/api/v1/orders/{order_id}`) or `unmatched`, never a raw path, and unknown HTTP methods are
counted as `OTHER`; a client can never create new time series by sending odd requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

NAMESPACE = "cnop"
UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; an API call here is milliseconds, a slow one (password hashing) a few hundred.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "OTHER"


BreakerStates = Callable[[], Iterable[tuple[str, int]]]
"""(upstream, state) pairs, the state as 0 closed, 1 half-open, 2 open."""


class _BreakerCollector(Collector):
    """Reads the breakers' states at scrape time (an open breaker turns half-open by time alone)."""

    def __init__(self, states: BreakerStates) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_circuit_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            labels=("upstream",),
        )
        for upstream, state in self._states():
            family.add_metric((upstream,), state)
        yield family


class _ReadAtScrape(Collector):
    """One unlabelled gauge whose value is read when Prometheus scrapes (None: no sample)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation)
        value = self._read()
        if value is not None:
            family.add_metric((), value)
        yield family


class Metrics:
    """The application's metrics and the registry that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ("method", "route"),
            buckets=_DURATION_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.orders = Counter(
            "orders",
            "Orders by type and resulting status.",
            ("order_type", "status"),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.trades_value_usd = Counter(
            "trades_value_usd",
            "Total value of executed trades in US dollars.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.ledger_entries = Counter(
            "ledger_entries", "Ledger entries written, by type.", ("type",), namespace=NAMESPACE, registry=self.registry
        )
        self.login_attempts = Counter(
            "login_attempts",
            "Login attempts by result (success, failure, blocked).",
            ("result",),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        # The gateway's upstreams (the cloud shape).
        self.upstream_requests = Counter(
            "upstream_requests",
            "Requests the gateway sent to (or refused for) an upstream, by outcome: ok, error (5xx), "
            "timeout, connect_error, rejected (breaker open), abandoned (client gone).",
            ("upstream", "outcome"),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "upstream_request_duration_seconds",
            "Time from sending a request upstream to the head of its answer.",
            ("upstream",),
            buckets=_DURATION_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "upstream_retries",
            "Retries of idempotent requests, by upstream.",
            ("upstream",),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "circuit_breaker_transitions",
            "Circuit breaker state changes, by upstream and the state entered.",
            ("upstream", "state"),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "redis_up",
            "1 when the last ping of the shared-state Redis answered, 0 when it did not (only with CNOP_REDIS_URL).",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.event_bus_problems = Counter(
            "event_bus_problems",
            "Order events the shared bus could not handle at once, by kind: publish_retry (a batch "
            "Redis did not take, sent again), dropped (lost: the outbox overflowed), read (a read failed).",
            ("kind",),
            namespace=NAMESPACE,
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

    def record_breaker_transition(self, upstream: str, old: str, new: str) -> None:
        self.breaker_transitions.labels(upstream, str(new)).inc()

    def watch_breakers(self, states: BreakerStates) -> None:
        """Export `cnop_circuit_breaker_state`, read from `states` at every scrape."""
        self.registry.register(_BreakerCollector(states))

    def watch_price_age(self, age_seconds: Callable[[], float | None]) -> None:
        """Export `cnop_price_age_seconds`: how old this process's freshest price is, read at scrape."""
        self.registry.register(
            _ReadAtScrape(
                f"{NAMESPACE}_price_age_seconds",
                "Seconds since the freshest price this process holds (+Inf before the first).",
                age_seconds,
            )
        )

    def watch_trigger_engine_lag(self, lag_seconds: Callable[[], float | None]) -> None:
        """Export `cnop_trigger_engine_lag_seconds` (only where the trigger engine runs)."""
        self.registry.register(
            _ReadAtScrape(
                f"{NAMESPACE}_trigger_engine_lag_seconds",
                "How far the trigger engine is behind the price ticks: the age of the oldest tick it has not "
                "finished (0 when it is caught up).",
                lag_seconds,
            )
        )

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
