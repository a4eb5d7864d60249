"""Who made the request, for the access log and every log line after it."""

from __future__ import annotations

import structlog
from starlette.requests import Request


def bind_request_user(request: Request, user: str) -> None:
    """Record who made the request, for the access log and every log line after this one."""
    request.state.user = user
    structlog.contextvars.bind_contextvars(user=user)
