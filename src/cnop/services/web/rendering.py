"""Rendering pages: the Jinja environment, the page response and its headers, forms, redirects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cnop.common.exceptions import CnopError, ValidationFailed
from cnop.common.web.problems import validation_errors
from cnop.services.user.service import Principal
from cnop.services.web import charts
from cnop.services.web.format import FILTERS, field_message
from cnop.services.web.session import CSRF_FIELD, csrf_token, keep_csrf

# Scripts and styles only from this server; no inline script, no eval, nothing from elsewhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 40

environment = Environment(
    loader=PackageLoader("cnop.services.web", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(FILTERS)
environment.globals.update(
    field_message=field_message,
    sparkline=charts.sparkline,
    allocation_ring=charts.allocation_ring,
    colour=charts.colour,
)

# Human words for the API's refusal codes (the detail follows them).
REFUSALS = {
    "insufficient_funds": "Not enough cash available",
    "insufficient_holdings": "Not enough units available",
    "insufficient_inventory": "The house cannot supply that many units now",
    "order_value_exceeds_limit": "The order is worth more than the per-order limit",
    "price_protection": "The market moved past your price bound",
    "asset_not_tradeable": "This asset is not tradeable at the moment",
    "asset_not_found": "No such asset",
    "price_unavailable": "No fresh market price right now; try again in a moment",
    "invalid_order": "The order cannot be placed",
    "order_not_cancellable": "The order is already final and cannot be cancelled",
    "order_not_found": "No such order",
    "daily_limit_exceeded": "Over the daily limit",
    "login_blocked": "Too many failed log-ins from this address",
    "invalid_credentials": "Wrong username or password",
    "username_taken": "That username is taken",
    "email_taken": "That email address is already registered",
    "weak_password": "The password is too weak",
    "validation_error": "Please correct the marked fields",
    "idempotency_in_progress": "That request is still being processed",
}


class PageRedirect(Exception):
    """Answer with a redirect (for htmx requests, an `HX-Redirect`)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class CsrfRefused(Exception):
    """A state-changing request without the right CSRF token."""


def redirect(request: Request, location: str) -> Response:
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def login_redirect(request: Request) -> PageRedirect:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return PageRedirect(f"/login?next={quote(target, safe='')}")


def safe_next(value: str | None) -> str:
    """A local path to go to after logging in; anything else goes to the dashboard."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 512:
        return value
    return "/dashboard"


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def page(
    request: Request,
    template: str,
    *,
    principal: Principal | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A rendered page (or partial) with the page CSP and a CSRF cookie; never cached when personal."""
    defaults: dict[str, Any] = {"notice": None, "stream_assets": "", "problem": None}
    html = environment.get_template(template).render(
        **{**defaults, **context},
        request=request,
        user=principal.user if principal is not None else None,
        is_admin=bool(principal and principal.is_admin),
        csrf_token=csrf_token(request),
        csrf_field=CSRF_FIELD,
        path=request.url.path,
    )
    headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"}
    response = HTMLResponse(html, status_code=status_code, headers=headers)
    keep_csrf(response, request)
    return response


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded body, first value per name; too large or another type is a 4xx refusal."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ValidationFailed("Send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ValidationFailed("The form is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("The form could not be read") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def field_errors(exc: ValidationError | ValidationFailed, fields: Sequence[str]) -> dict[str, str]:
    """`{field: message}` for a form; errors of the whole request go under `_form`.

    A cross-field rule's message that starts with a field name (`price is required ...`) is put
    next to that field.
    """
    raw = exc.errors if isinstance(exc, ValidationFailed) else validation_errors(exc.errors())
    errors: dict[str, str] = {}
    for error in raw:
        name = error.get("field", "body").removeprefix("body.")
        message = error.get("message", "is invalid")
        if name not in fields:
            first = message.split(" ", 1)[0]
            name = first if first in fields else "_form"
        errors.setdefault(name, message)
    if not errors and isinstance(exc, ValidationFailed):
        errors["_form"] = exc.detail
    return errors


def refusal(exc: CnopError) -> dict[str, str]:
    """A refusal in words: `{"title", "detail", "code"}` for the page's alert."""
    return {"title": REFUSALS.get(exc.code, exc.title), "detail": exc.detail, "code": exc.code}


def non_empty(form: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The named fields that were filled in, stripped."""
    return {name: form[name].strip() for name in names if form.get(name, "").strip()}


def assets_dir(configured: str | None) -> Path | None:
    """The npm `node_modules` folder with the web assets: configured, else of the checkout, else cwd."""
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[4] / "node_modules", Path.cwd() / "node_modules"]
    for candidate in candidates:
        if (candidate / "htmx.org").is_dir():
            return candidate
    return None
