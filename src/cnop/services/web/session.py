"""Web sessions and CSRF: an access token in an HttpOnly cookie, and a double-submit CSRF token.

The session cookie holds an ordinary access token, so a web session ends exactly as an API
token does: at its expiry, when the user logs out (its id is revoked) and when the password
changes (every older token is refused). The cookie is HttpOnly (scripts never see it, and no
token is kept in localStorage), SameSite=Strict, Path=/, and Secure when the request came over
https (directly, or per a trusted proxy's X-Forwarded-Proto; the request-context middleware
decides). Its Max-Age is the token's lifetime.

CSRF: a random token in its own cookie (HttpOnly, SameSite=Strict) must come back with every
state-changing request, as the form field `csrf_token` or the `X-CSRF-Token` header (htmx
sends the header). A cross-site page can neither read the cookie nor guess the token.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from cnop.common.exceptions import AuthenticationRequired
from cnop.common.security import AccessToken
from cnop.services.user.service import AccountService, Principal

SESSION_COOKIE = "cnop_session"
CSRF_COOKIE = "cnop_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
CSRF_COOKIE_SECONDS = 7 * 86400


def is_https(request: Request) -> bool:
    state = request.scope.get("state") or {}
    return bool(state.get("https", request.url.scheme == "https"))


def set_session(response: Response, request: Request, token: AccessToken) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token.access_token,
        max_age=token.expires_in,
        path="/",
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=is_https(request), httponly=True, samesite="strict")


def session_token(request: Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return token if token and len(token) < 4096 else None


async def session_principal(request: Request, accounts: AccountService) -> Principal | None:
    """The signed-in user of the session cookie, or None (no cookie, expired, revoked)."""
    cached = request.scope.setdefault("state", {}).get("web_principal")
    if isinstance(cached, Principal):
        return cached
    token = session_token(request)
    if token is None:
        return None
    try:
        principal = await accounts.authenticate(token)
    except AuthenticationRequired:
        return None
    request.scope["state"]["web_principal"] = principal
    return principal


def csrf_token(request: Request) -> str:
    """The request's CSRF token: the cookie's, or a new one (set on the response by `keep_csrf`)."""
    state = request.scope.setdefault("state", {})
    token = state.get("csrf_token")
    if isinstance(token, str):
        return token
    cookie = request.cookies.get(CSRF_COOKIE)
    token = cookie if cookie and 20 <= len(cookie) <= 100 else secrets.token_urlsafe(32)
    state["csrf_token"] = token
    return token


def keep_csrf(response: Response, request: Request) -> None:
    """Set the CSRF cookie when the request came without it."""
    token = csrf_token(request)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            max_age=CSRF_COOKIE_SECONDS,
            path="/",
            secure=is_https(request),
            httponly=True,
            samesite="strict",
        )


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    """True when the request carries the CSRF cookie and the same token in a field or header."""
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not cookie or not sent:
        return False
    return hmac.compare_digest(cookie.encode(), sent.encode())
