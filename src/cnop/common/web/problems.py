"""Errors as RFC 9457 problem details (`application/problem+json`).

Body: `{"type", "title", "status", "detail", "code", "request_id", "errors"?}`; `type` is
`https://cnop.dev/problems/<code>`. Nothing from an unexpected exception (class, message, stack)
reaches the body: it goes to the log with its traceback, and the client gets `internal_error`.

Validation errors (422 `validation_error`) list `{"field", "message"}`. `field` is the dotted
location of the bad value: body fields are named bare (`amount`, `legs.0.price`), because the
body is where nearly every field lives and that is how the services name them
(`ValidationFailed.field("amount", ...)`); other parts keep their source as a prefix
(`query.limit`, `path.order_id`, `header.idempotency-key`), so the two can never collide. An
error about the body as a whole (missing, not JSON, not an object) has `field` `body`. The
message is pydantic's, never the input value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import simplejson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from cnop.common.exceptions import (
    AuthenticationRequired,
    CnopError,
    ConditionFailed,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    StoreError,
    StoreUnavailable,
    ValidationFailed,
)
from cnop.common.jsonio import ProblemResponse
from cnop.common.logging import get_logger

PROBLEM_TYPE_BASE = "https://cnop.dev/problems/"
INTERNAL_ERROR_CODE = "internal_error"
INTERNAL_ERROR_TITLE = "Internal server error"
INTERNAL_ERROR_DETAIL = "An unexpected error occurred; it has been logged. Quote the request id when reporting it."

_log = get_logger("cnop.gateway.errors")

# HTTP statuses raised as Starlette/FastAPI HTTPException (by the router or by code that is not
# ours) answer with the code of the matching CnopError, so a client sees one vocabulary.
_HTTP_STATUS_ERRORS: dict[int, type[CnopError]] = {
    400: CnopError,
    401: AuthenticationRequired,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}
_DEFAULT_DETAILS = {
    404: "The requested resource does not exist.",
    405: "The method is not allowed for the requested resource.",
}
_WHOLE_BODY_MESSAGES = {
    "json_invalid": "Request body is not valid JSON",
    "missing": "Request body is required",
    "model_attributes_type": "Request body must be a JSON object",
    "dict_type": "Request body must be a JSON object",
}
_BODYLESS_STATUSES = frozenset({204, 304})


def problem_body(
    request_id: str | None,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = [dict(e) for e in errors]
    return body


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestContextMiddleware` gave this request, if it ran."""
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def scope_problem_response(
    scope: Scope,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: Sequence[Mapping[str, str]] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """A problem response built from an ASGI scope, for middleware that has no `Request`."""
    body = problem_body(request_id_of(scope), status, code, title, detail, errors)
    return ProblemResponse(body, status_code=status, headers=headers)


def problem_response(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: Sequence[Mapping[str, str]] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """An RFC 9457 problem response carrying the request's id."""
    return scope_problem_response(request.scope, status, code, title, detail, errors, headers=headers)


def _retry_after_header(exc: CnopError) -> dict[str, str] | None:
    retry_after = exc.extra.get("retry_after")
    if retry_after is None:
        return None
    return {"Retry-After": str(max(1, int(retry_after)))}


def cnop_error_response(request: Request, exc: CnopError) -> ProblemResponse:
    errors = exc.errors if isinstance(exc, ValidationFailed) else None
    headers = _retry_after_header(exc)
    if isinstance(exc, RateLimited) and headers is None:
        headers = {"Retry-After": "1"}
    if exc.status >= 500:
        _log.warning("service_error", code=exc.code, status=exc.status, detail=exc.detail)
    return problem_response(request, exc.status, exc.code, exc.title, exc.detail, errors, headers=headers)


def _field_name(loc: Sequence[int | str]) -> str:
    if not loc:
        return "body"
    source, *rest = loc
    parts = [str(part) for part in rest]
    if source == "body":
        return ".".join(parts) if parts else "body"
    return ".".join([str(source), *parts])


def _message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "Invalid value"))
    # Custom validators' messages arrive as "Value error, <message>"; the prefix is pydantic's.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def validation_errors(raw_errors: Sequence[Any]) -> list[dict[str, str]]:
    """`{field, message}` for each of pydantic's errors; input values and doc URLs are dropped."""
    errors: list[dict[str, str]] = []
    for error in raw_errors:
        loc = tuple(error.get("loc", ()))
        kind = error.get("type")
        if loc[:1] == ("body",) and (len(loc) == 1 or kind == "json_invalid") and kind in _WHOLE_BODY_MESSAGES:
            # json_invalid's loc holds a character offset, not a field.
            errors.append({"field": "body", "message": _WHOLE_BODY_MESSAGES[str(kind)]})
        else:
            errors.append({"field": _field_name(loc), "message": _message(error)})
    return errors


def _validation_detail(errors: Sequence[Mapping[str, str]]) -> str:
    if len(errors) == 1:
        return f"{errors[0]['field']}: {errors[0]['message']}"
    return f"{len(errors)} fields are invalid; see errors"


async def _handle_cnop_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CnopError)
    return cnop_error_response(request, exc)


async def _handle_store_error(request: Request, exc: Exception) -> Response:
    """A store outage is a 503 the client may retry; a condition no use case mapped is a bug (500)."""
    if isinstance(exc, ConditionFailed):
        log_unhandled(request.scope, exc)
        return internal_error_response(request.scope)
    _log.warning("store_unavailable", method=request.method, path=request.url.path, exc_info=exc)
    return cnop_error_response(request, StoreUnavailable("The data store did not answer; try again shortly."))


async def _handle_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    return problem_response(
        request, 422, ValidationFailed.code, ValidationFailed.title, _validation_detail(errors), errors
    )


async def _handle_json_decode(request: Request, exc: Exception) -> Response:
    errors = [{"field": "body", "message": _WHOLE_BODY_MESSAGES["json_invalid"]}]
    return problem_response(
        request, 422, ValidationFailed.code, ValidationFailed.title, _validation_detail(errors), errors
    )


def http_error_response(scope: Scope, status: int, detail: str | None, headers: Mapping[str, str] | None) -> Response:
    """The problem response for a bare HTTP status (the router's 404 and 405, or `HTTPException`)."""
    if status in _BODYLESS_STATUSES or status < 200:
        return Response(status_code=status, headers=headers)
    error = _HTTP_STATUS_ERRORS.get(status)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if error is not None and error.status == status:
        code, title = error.code, error.title
    elif status == 500:
        code, title = INTERNAL_ERROR_CODE, INTERNAL_ERROR_TITLE
    else:
        code, title = phrase.lower().replace(" ", "_").replace("-", "_"), phrase
    # Starlette fills an unset detail with the status phrase; prefer our wording then.
    if not detail or detail == phrase:
        detail = _DEFAULT_DETAILS.get(status, title)
    return scope_problem_response(scope, status, code, title, detail, headers=headers)


def unreadable_body_message(cause: BaseException | None) -> str | None:
    """Why a body FastAPI could not parse is unreadable, or None if the cause is not the body's.

    FastAPI answers 400 for every parse failure that is not a `JSONDecodeError`: a number of more
    than 4,300 digits (Python's int limit), nesting deeper than the decoder recurses, bytes that
    are not UTF-8. They are bad input like any other malformed body: 422 `validation_error`.
    """
    if isinstance(cause, UnicodeDecodeError):
        return "Request body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "Request body is nested too deeply"
    if isinstance(cause, ValueError):
        return "Request body is not valid JSON (a number may be too long)"
    return None


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and (message := unreadable_body_message(exc.__cause__)) is not None:
        errors = [{"field": "body", "message": message}]
        return problem_response(
            request, 422, ValidationFailed.code, ValidationFailed.title, _validation_detail(errors), errors
        )
    detail = exc.detail if isinstance(exc.detail, str) else None
    return http_error_response(request.scope, exc.status_code, detail, exc.headers)


def log_unhandled(scope: Scope, exc: BaseException) -> None:
    """Log an exception nobody handled, with its traceback."""
    _log.error(
        "unhandled_exception",
        method=scope.get("method"),
        path=scope.get("path"),
        exc_info=exc,
    )


def internal_error_response(scope: Scope) -> ProblemResponse:
    """The 500 a client sees for any bug: generic wording, the request id to quote."""
    return scope_problem_response(scope, 500, INTERNAL_ERROR_CODE, INTERNAL_ERROR_TITLE, INTERNAL_ERROR_DETAIL)


async def _handle_unhandled(request: Request, exc: Exception) -> Response:
    log_unhandled(request.scope, exc)
    return internal_error_response(request.scope)


def install_exception_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem details."""
    app.add_exception_handler(CnopError, _handle_cnop_error)
    app.add_exception_handler(StoreError, _handle_store_error)
    app.add_exception_handler(RequestValidationError, _handle_request_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    # An endpoint that parses JSON itself (stdlib or `cnop.common.jsonio`) fails the same way a
    # declared body does.
    app.add_exception_handler(json.JSONDecodeError, _handle_json_decode)
    app.add_exception_handler(simplejson.JSONDecodeError, _handle_json_decode)
    # Starlette calls this one from its outermost middleware; `UnhandledErrorMiddleware` catches
    # the same exceptions further in, so their 500s also carry the gateway's headers.
    app.add_exception_handler(Exception, _handle_unhandled)
