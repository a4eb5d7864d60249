"""Which service answers which path in the cloud shape, and how long the gateway waits for it.

`ROUTES` is the one table: a routed prefix is one line here. A path belongs to the longest
prefix it equals or continues with a `/` (`/api/v1/orders` takes `/api/v1/orders/01J...` but
not `/api/v1/ordersx`). The base URL of each service comes from `CNOP_UPSTREAM_URLS`; a
prefix's read timeout can be overridden with `CNOP_UPSTREAM_TIMEOUTS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    """A path prefix served by one upstream service.

    `timeout` bounds each wait for the upstream (the answer's head, and each chunk after it);
    `None` means no read timeout, for event streams that may be quiet between heartbeats.
    """

    prefix: str
    upstream: str
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS

    def matches(self, path: str) -> bool:
        return path == self.prefix or (path.startswith(self.prefix) and path[len(self.prefix)] == "/")


ROUTES: tuple[Route, ...] = (
    Route("/api/v1/orders", "order"),
    Route("/api/v1/assets", "order"),  # an asset's transactions are the order service's records
    Route("/api/v1/events", "order", timeout=None),
    Route("/api/v1/auth", "user"),
    Route("/api/v1/balance", "user"),
    Route("/api/v1/portfolio", "user"),
    Route("/.well-known/jwks.json", "user"),
    Route("/api/v1/admin/users", "user"),
    Route("/api/v1/inventory", "inventory"),
    Route("/api/v1/prices", "inventory", timeout=None),
    Route("/api/v1/admin", "inventory"),
    Route("/api/v1/insights", "insights", timeout=30.0),
    # The Alpaca-compatible adapter trades through the order service's use cases; wrap the
    # gateway in `cnop.gateway.alpaca.AlpacaErrorShape` so its own refusals there are Alpaca's too.
    Route("/alpaca", "order"),
)


class RouteTable:
    """Finds the route of a path: longest matching prefix first."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))
        prefixes = [r.prefix for r in self.routes]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("a prefix is routed twice")

    @classmethod
    def configured(cls, timeouts: Mapping[str, float], routes: Iterable[Route] = ROUTES) -> RouteTable:
        """`routes` with the read timeouts of `CNOP_UPSTREAM_TIMEOUTS` applied (an unknown prefix is an error)."""
        routes = list(routes)
        known = {r.prefix for r in routes}
        unknown = sorted(set(timeouts) - known)
        if unknown:
            raise ValueError(f"upstream_timeouts names prefixes that are not routed: {', '.join(unknown)}")
        return cls(replace(r, timeout=timeouts[r.prefix]) if r.prefix in timeouts else r for r in routes)

    @property
    def upstreams(self) -> frozenset[str]:
        return frozenset(r.upstream for r in self.routes)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None
