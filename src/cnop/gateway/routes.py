"""The route template a request was answered by, for metric labels and the access log."""

from __future__ import annotations

from starlette.types import Scope

from cnop.common.metrics import UNMATCHED_ROUTE


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/api/v1/orders/{order_id}`), or `unmatched`.

    Read after the app ran. Starlette sets `scope["route"]` on a match (also on the partial match
    that answers 405). FastAPI 0.165 resolves included routers lazily and leaves that route's
    router-local path there, so the full template comes from the effective route context it
    keeps in `scope["fastapi"]`; if a FastAPI upgrade moves it, this falls back to the route.
    A route inside a mounted sub-application is labelled with its path inside the mount.
    """
    fastapi_scope = scope.get("fastapi")
    if fastapi_scope:
        context = fastapi_scope.get("effective_route_context")
        path = getattr(context, "path_format", None)
        if isinstance(path, str):
            return path
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE
