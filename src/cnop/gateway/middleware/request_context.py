"""Request id, client ip, security headers and the access log line."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.config import Settings
from cnop.common.logging import get_logger
from cnop.gateway.client_ip import TrustedProxies
from cnop.gateway.middleware.errors import answer_unhandled
from cnop.gateway.routes import route_template

Header = tuple[bytes, bytes]
REQUEST_ID_HEADER = "X-Request-ID"

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_access_log = get_logger("cnop.access")

_SECURITY_HEADERS: tuple[Header, ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_CSP = (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'")
# Swagger UI and ReDoc load their scripts and styles from jsDelivr and run an inline script.
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; "
    b"script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src 'self' https://fonts.gstatic.com; "
    b"img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    b"worker-src 'self' blob:; "
    b"frame-ancestors 'none'",
)
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def _add_missing(headers: list[Header], extra: Sequence[Header]) -> None:
    """Append each of `extra` whose name the response did not set itself."""
    present = {name.lower() for name, _ in headers}
    headers.extend(header for header in extra if header[0] not in present)


class RequestContextMiddleware:
    """Request id, client ip, security headers and the access log line, for every HTTP request.

    - `X-Request-ID`: the client's if it matches `[A-Za-z0-9._:-]{1,128}`, else a new 32-hex id;
      in `scope["state"]["request_id"]`, bound in structlog's contextvars, echoed on the response.
    - Client ip (`scope["state"]["client_ip"]`): see `TrustedProxies`.
    - Security headers on every response, unless the response set its own: nosniff, DENY,
      no-referrer, a `default-src 'self'` CSP (widened for `/docs` and `/redoc` so that the
      interactive docs load), HSTS when the request came over https (directly, or per
      `X-Forwarded-Proto` from a trusted proxy), and `Cache-Control: no-store` under `/api/`.
    """

    def __init__(self, app: ASGIApp, settings: Settings, docs_paths: Sequence[str] = ("/docs", "/redoc")) -> None:
        self.app = app
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self._docs_paths = tuple(docs_paths)
        self._api_headers = (*_SECURITY_HEADERS, _CSP, _NO_STORE)
        self._docs_headers = (*_SECURITY_HEADERS, _DOCS_CSP)
        self._other_headers = (*_SECURITY_HEADERS, _CSP)

    def _is_docs(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        raw_request_id: bytes | None = None
        forwarded_for: list[bytes] = []
        forwarded_proto: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw_request_id = raw_request_id or value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
        if raw_request_id is not None and _REQUEST_ID.fullmatch(raw_request_id):
            request_id = raw_request_id.decode("ascii")
        else:
            request_id = os.urandom(16).hex()

        client = scope.get("client")
        peer: str | None = client[0] if client else None
        https = scope.get("scheme") == "https"
        if self._proxies and peer is not None and self._proxies.trusts(peer):
            xff = b",".join(forwarded_for).decode("latin-1") if forwarded_for else None
            client_ip = self._proxies.client_ip(peer, xff)
            https = https or (forwarded_proto or b"").rsplit(b",", 1)[-1].strip().lower() == b"https"
        else:
            client_ip = peer or "unknown"

        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = client_ip
        state["https"] = https  # the web app marks its cookies Secure on https requests
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)

        path: str = scope["path"]
        if path.startswith("/api/"):
            extra: tuple[Header, ...] = self._api_headers
        elif self._is_docs(path):
            extra = self._docs_headers
        else:
            extra = self._other_headers
        extra = (*extra, (b"x-request-id", request_id.encode("ascii")), *((_HSTS,) if https else ()))
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                _add_missing(headers, extra)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:
                raise
            await answer_unhandled(scope, receive, send_with_headers, exc)
        finally:
            if _access_log.is_enabled_for(logging.INFO):
                _access_log.info(
                    "request",
                    method=scope["method"],
                    path=path,
                    route=route_template(scope),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client_ip=client_ip,
                    user=state.get("user"),
                )
            structlog.contextvars.reset_contextvars(**tokens)
            if "user" in state:
                structlog.contextvars.unbind_contextvars("user")
