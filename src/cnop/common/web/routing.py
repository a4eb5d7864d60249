"""Route classes of the API: exact JSON bodies, and a lean path past FastAPI's per-request work.

`ExactJSONRoute`: JSON bodies are read exactly (`cnop.common.jsonio.loads_request`). Every JSON
number is read from its text (never through float); `NaN`, `Infinity` and number texts over 40
characters reach the field they were sent for as a refusal that names it; a key repeated in one
object is a 422 naming that key (checked before the body is validated, so nothing runs on such a
body).

`LeanRoute` (and so `ExactJSONRoute`): routes keep declaring what they need the FastAPI way
(`Annotated` dependencies, path, query and header parameters, a body model), and the OpenAPI
document is built from those declarations as always. What changes is the work per request. At
start-up the route's dependency tree is compiled into a plan; a request then runs the plan:
each dependency is called once per request (FastAPI's cache), a component (`provide(name)` in
`cnop.services.dependencies`) is read off the app without a call, and the parameters and the
body are validated by FastAPI's own functions (`request_params_to_args`,
`request_body_to_args`), in FastAPI's order (dependencies first, then path, query, header,
body). Skipped: the dependency solver's bookkeeping, two exit stacks, the telemetry hooks and
the response machinery FastAPI keeps for endpoints that return data (these endpoints return
their `Response`).

Anything off the common path is answered by FastAPI itself, so that every refusal is exactly
FastAPI's: a parameter or body that does not validate, a body that is not JSON or comes with
another content type, dependency overrides (tests), and routes the plan cannot hold
(generators, cookies, forms, `BackgroundTasks`, endpoints not returning a `Response`). Such a
request starts over on FastAPI's handler with the body already read; the dependencies it had
called are called again (they are reads, and a refusal raised by one is raised before any
fallback). A dependency raising (401, 403) raises from the lean path as from FastAPI's.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final

from fastapi._body_limit import wrap_app_with_body_limit
from fastapi._compat import Undefined, field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import (
    _get_param_aliases,
    _get_param_model,
    _is_json_field,
    _validate_value_with_model_field,
    request_body_to_args,
    request_params_to_args,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, _apply_router_form_limits, _update_scope
from fastapi.telemetry import TelemetryConfig
from fastapi.telemetry._api import _route_selected
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, WebSocketRoute
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from cnop.common.jsonio import DuplicateKey, loads_request

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

NATIVE_TELEMETRY_OFF: Final[TelemetryConfig] = {"tracing": False, "metrics": False, "logs": False}
"""`FastAPI(telemetry=...)` of every app here. FastAPI's native OpenTelemetry hooks emit only once
an OpenTelemetry provider is configured, which this project never does (it exports Prometheus
metrics and structured access logs); asking whether one is configured cost 2.5 µs on every
request (decision 0030)."""
COMPONENT_ATTRIBUTE = "cnop_component"
"""A dependency carrying this attribute returns `app.state.container.<value>` (see `provide`)."""


class ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_request(await self.body())
        return self._json


def _duplicate_key_error(exc: DuplicateKey) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "duplicate_key",
                "loc": ("body", exc.key),
                "msg": "is given more than once in one object",
                "input": None,
            }
        ]
    )


class _Fallback(Exception):
    """The lean path stops here: FastAPI's handler answers this request."""


_FALLBACK = _Fallback()


@dataclass(frozen=True, slots=True)
class _Scalar:
    """One plain parameter (one value, not a model, a sequence or JSON), with what FastAPI's
    `request_params_to_args` works out for it on every request worked out once."""

    field: Any
    name: str
    aliases: tuple[str, ...]  # the request keys FastAPI tries, in its order
    where: str  # "path", "query" or "header": the first element of an error's `loc`


@dataclass(frozen=True, slots=True)
class _Params:
    """The parameters of one kind of a dependant: as scalars when every one is plain (read here,
    exactly as `request_params_to_args` reads them), otherwise FastAPI's own function reads them."""

    fields: list[Any]
    scalars: tuple[_Scalar, ...] | None

    def __bool__(self) -> bool:
        return bool(self.fields)

    def read(self, received: Any) -> tuple[dict[str, Any], list[Any]]:
        if self.scalars is None:
            return request_params_to_args(self.fields, received)
        values: dict[str, Any] = {}
        for scalar in self.scalars:
            aliases = scalar.aliases
            alias = aliases[0]
            if len(aliases) > 1:
                alias = next((key for key in aliases if key in received), alias)
            value = received.get(alias, None)
            value, errors = _validate_value_with_model_field(
                field=scalar.field,
                value=Undefined if value is None else value,
                values=values,
                loc=(scalar.where, alias),
            )
            if errors:
                return values, errors
            values[scalar.name] = value
        return values, []


def _params(fields: list[Any]) -> _Params:
    scalars: list[_Scalar] = []
    for field in fields:
        if (
            _get_param_model(field) is not None
            or _is_json_field(field)
            or field_annotation_is_sequence(field.field_info.annotation)
        ):
            return _Params(list(fields), None)
        aliases = tuple(key for _, key in _get_param_aliases(field))
        scalars.append(_Scalar(field, field.name, aliases, field.field_info.in_.value))
    return _Params(list(fields), tuple(scalars))


@dataclass(slots=True)
class _Plan:
    """One dependant (the endpoint or a dependency), compiled."""

    call: Callable[..., Any]
    name: str | None
    is_async: bool
    use_cache: bool
    component: str | None
    request_param: str | None
    path_params: _Params
    query_params: _Params
    header_params: _Params
    subs: list[_Plan]


def _compile(dependant: Dependant) -> _Plan | None:
    """The plan of `dependant`, or None when it uses something the lean path does not do."""
    call = dependant.call
    if call is None:
        return None
    if (
        dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.own_oauth_scopes
        or dependant.concurrency is not None
    ):
        return None
    component = getattr(call, COMPONENT_ATTRIBUTE, None)
    is_async = inspect.iscoroutinefunction(call)
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        return None
    if not is_async and not inspect.isclass(call):
        return None  # FastAPI runs a plain function in a thread pool; keep that its business
    if inspect.isclass(call) and inspect.isgeneratorfunction(call.__init__):
        return None
    subs: list[_Plan] = []
    for sub in dependant.dependencies:
        plan = _compile(sub)
        if plan is None:
            return None
        subs.append(plan)
    return _Plan(
        call=call,
        name=dependant.name,
        is_async=is_async,
        use_cache=dependant.use_cache,
        component=component if isinstance(component, str) and not subs and not dependant.path_params else None,
        request_param=dependant.request_param_name,
        path_params=_params(dependant.path_params),
        query_params=_params(dependant.query_params),
        header_params=_params(dependant.header_params),
        subs=subs,
    )


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returned = typing.get_type_hints(call).get("return")
    except Exception:
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def _is_json(content_type: str | None) -> bool:
    """The content types FastAPI reads as JSON, in their plain spelling (others go to FastAPI)."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _solve(plan: _Plan, request: Request, cache: dict[Any, Any]) -> dict[str, Any]:
    """The keyword arguments of `plan`'s call; raises `_FALLBACK` on any parameter error."""
    values: dict[str, Any] = {}
    for sub in plan.subs:
        if sub.use_cache and sub.call in cache:
            solved = cache[sub.call]
        elif sub.component is not None:
            solved = getattr(request.app.state.container, sub.component)
        else:
            arguments = await _solve(sub, request, cache)
            solved = await sub.call(**arguments) if sub.is_async else sub.call(**arguments)
        if sub.name is not None:
            values[sub.name] = solved
        if sub.call not in cache:
            cache[sub.call] = solved
    if plan.path_params:
        found, errors = plan.path_params.read(request.path_params)
        if errors:
            raise _FALLBACK
        values.update(found)
    if plan.query_params:
        found, errors = plan.query_params.read(request.query_params)
        if errors:
            raise _FALLBACK
        values.update(found)
    if plan.header_params:
        found, errors = plan.header_params.read(request.headers)
        if errors:
            raise _FALLBACK
        values.update(found)
    if plan.request_param is not None:
        values[plan.request_param] = request
    return values


class LeanRoute(APIRoute):
    """An `APIRoute` whose requests take the lean path described in the module docstring."""

    request_class: type[Request] = Request

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._full_handler = self.get_route_handler()
        self._full_handler_app = self.app  # FastAPI's own (what a lean route answers with otherwise)
        plan = _compile(self.dependant)
        if plan is not None and not plan.is_async:
            plan = None
        if plan is not None and not _returns_response(endpoint):
            plan = None
        self._body_params = list(self.dependant.body_params)
        if self._body_params and (self.body_field is None or not self._reads_json_body()):
            plan = None
        self._plan = plan
        self.lean = plan is not None
        if plan is not None:
            self.app = wrap_app_with_body_limit(self._lean_app, getattr(self, "max_body_size", None))

    def _reads_json_body(self) -> bool:
        from fastapi import params

        return self.body_field is not None and not isinstance(self.body_field.field_info, params.Form)

    async def read_body(self, request: Request) -> Any:
        """The body as FastAPI would hand it to validation; raises `_FALLBACK` where it would not."""
        if not _is_json(request.headers.get("content-type")):
            raise _FALLBACK
        if not await request.body():
            raise _FALLBACK
        try:
            return await request.json()
        except Exception:
            raise _FALLBACK from None

    async def _lean_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self.request_class(scope, receive, send)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await self._answer(request)
            if response is None:
                async with AsyncExitStack() as request_stack:
                    scope["fastapi_inner_astack"] = request_stack
                    async with AsyncExitStack() as function_stack:
                        scope["fastapi_function_astack"] = function_stack
                        response = await self._full_handler(request)
                    await response(scope, receive, send)
                return
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(app, request)(scope, receive, send)

    async def _answer(self, request: Request) -> Response | None:
        """The endpoint's response, or None when FastAPI's handler must answer instead."""
        plan = self._plan
        assert plan is not None
        provider = self.dependency_overrides_provider
        if provider is not None and getattr(provider, "dependency_overrides", None):
            return None
        try:
            values = await _solve(plan, request, {})
            if self._body_params:
                body = await self.read_body(request)
                found, errors = await request_body_to_args(
                    body_fields=self._body_params, received_body=body, embed_body_fields=self._embed_body_fields
                )
                if errors:
                    raise _FALLBACK
                values.update(found)
        except _Fallback:
            return None
        response = await plan.call(**values)
        if not isinstance(response, Response):
            raise TypeError(f"{self.path}: the endpoint returned {type(response).__name__}, not a Response")
        return response


class ExactJSONRoute(LeanRoute):
    """A `LeanRoute` reading JSON bodies exactly (see the module docstring)."""

    request_class = ExactJSONRequest

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        reads_body = self.body_field is not None

        async def exact_handler(request: Request) -> Response:
            exact = request
            if not isinstance(exact, ExactJSONRequest):
                exact = ExactJSONRequest(request.scope, request.receive)
            if reads_body:
                try:
                    await exact.json()
                except DuplicateKey as exc:
                    raise _duplicate_key_error(exc) from None
                except Exception:  # noqa: S110 - not JSON, empty, too deep: FastAPI's handling answers it below
                    pass
            return await handler(exact)

        return exact_handler


def lean_routes(routes: Sequence[Any]) -> list[str]:
    """The paths of `routes` that take the lean path (for tests and the benchmark's notes)."""
    return [route.path for route in routes if getattr(route, "lean", False)]


# --- the route index ----------------------------------------------------------------------------


# Route classes whose `matches` reads only the scope's type, path and method (and, for FastAPI's,
# an included router's context, which a top-level route never has).
_PATH_MATCHERS = (StarletteRoute.matches, APIRoute.matches, Mount.matches, WebSocketRoute.matches)


class RouteIndex:
    """The router's entry, which finds the route of a request with a fixed path without asking
    every route in turn.

    FastAPI asks the routes one by one (`route.matches(scope)`) and takes the first full match;
    with 60-odd flat routes that is 8-16 µs for the hot reads and a whole scan for a 404. This
    index keeps, for every path of a route without path parameters, the routes (in their order)
    whose pattern matches that very path: the only ones that can answer it. A request for such a
    path asks just those, in order, and the first full match is the one FastAPI's scan would
    have found, because every route in between matches no request with this path. Any other
    request (a path with parameters, a 404, a method no candidate takes, a websocket) goes to
    FastAPI's router unchanged. Routes whose matching could look at more than the path and method
    (a host route, an included router) end the index: routes after one are never answered by it.
    The index is rebuilt when the number of routes changes.
    """

    def __init__(self, router: Any) -> None:
        self.router = router
        self.fallback = router.app
        self._count = -1
        self._candidates: dict[str, tuple[Any, ...]] = {}

    def _build(self) -> None:
        routes = list(self.router.routes)
        known: list[Any] = []
        for route in routes:
            if type(route).matches not in _PATH_MATCHERS or not hasattr(route, "path_regex"):
                break
            known.append(route)
        paths = [
            route.path
            for route in known
            if isinstance(route, StarletteRoute) and not route.param_convertors and route.path.startswith("/")
        ]
        self._candidates = {
            path: tuple(route for route in known if route.path_regex.match(path) is not None) for path in paths
        }
        self._count = len(routes)

    def find(self, scope: Scope) -> tuple[Any, Scope] | None:
        """The route FastAPI's scan would pick for `scope` and its child scope, when this index
        knows it; None otherwise (the scan decides)."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        if len(self.router.routes) != self._count:
            self._build()
        for route in self._candidates.get(scope["path"], ()):
            match, child_scope = route.matches(scope)
            if match == Match.FULL:
                return route, child_scope
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope)
        if found is None:
            await self.fallback(scope, receive, send)
            return
        route, child_scope = found
        router = self.router
        # What FastAPI's router does with the route its scan picked (`APIRouter.app`).
        _apply_router_form_limits(scope, router.form_limits)
        if "router" not in scope:
            scope["router"] = router
        _update_scope(scope, child_scope)
        _route_selected(scope=scope, path=getattr(route, "path_format", None), mount=isinstance(route, Mount))
        await route.handle(scope, receive, send)


def install_route_index(app: Any) -> bool:
    """Put a `RouteIndex` in front of `app`'s router; False (nothing changed) where it cannot be."""
    router = app.router
    if getattr(router, "middleware_stack", None) != router.app:
        return False
    router.middleware_stack = RouteIndex(router)
    return True
