"""Errors as Alpaca writes them: `{"code": <int>, "message": <str>}`, with Alpaca's codes.

Everything under the compat prefix answers in this shape, whoever refused the request: a route,
request validation, the router (unknown path, wrong method) or the gateway's middleware (413,
429, 503, 500). The native error (a problem document) is translated here, in one place, so the
two APIs can never disagree about what went wrong; only the shape and the code differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Alpaca's codes: the HTTP status, then 10000, then a detail digit (40010001: invalid input).
VALIDATION = 40010001
UNAUTHENTICATED = 40110000
FORBIDDEN = 40310000
NOT_FOUND = 40410000
NOT_CANCELABLE = 42210000

# Native problem codes whose HTTP status differs under Alpaca, with the code it uses for them.
_BY_PROBLEM_CODE: dict[str, tuple[int, int]] = {
    "validation_error": (422, VALIDATION),
    "insufficient_funds": (403, FORBIDDEN),
    "insufficient_holdings": (403, FORBIDDEN),
    "insufficient_inventory": (403, FORBIDDEN),
    "insufficient_scope": (403, FORBIDDEN),
    "order_not_cancellable": (422, NOT_CANCELABLE),
}


def alpaca_error(status: int, problem_code: str | None) -> tuple[int, int]:
    """The status and Alpaca code for a native error: business rules refused are 422 40010001."""
    if problem_code in _BY_PROBLEM_CODE:
        return _BY_PROBLEM_CODE[problem_code]
    if status == 422:
        return 422, VALIDATION
    return status, status * 100_000 + 10_000


def alpaca_message(problem: Mapping[str, Any]) -> str:
    """One line for the client: the field and what is wrong with it, or the problem's detail."""
    errors = problem.get("errors")
    if isinstance(errors, Sequence) and errors and isinstance(errors[0], Mapping):
        parts = [f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, Mapping)]
        return "; ".join(parts)
    detail = problem.get("detail") or problem.get("title") or "error"
    return str(detail)


def alpaca_body(problem: Mapping[str, Any], status: int) -> tuple[int, dict[str, Any]]:
    """The Alpaca status and body for a native problem document."""
    code = problem.get("code")
    new_status, alpaca_code = alpaca_error(status, code if isinstance(code, str) else None)
    return new_status, {"code": alpaca_code, "message": alpaca_message(problem)}
