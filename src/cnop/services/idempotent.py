"""Run a write use case under the client's `Idempotency-Key` (docs/api.md: Idempotency).

The wrapper claims the key, runs the use case with the claim's mark set for it
(`cnop.common.idempotency.applying`): the use case's own transaction includes the mark
(`applying_mark()`), so the work and the record commit together. Routes pass a plain call of the
use case; no store op travels through their signatures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.exceptions import CnopError, IdempotencyInProgress, ValidationFailed
from cnop.common.idempotency import Applied, IdempotencyRecords, StoredResponse, applying, request_fingerprint
from cnop.common.jsonio import Rendered, render
from cnop.common.web.problems import problem_response

IDEMPOTENCY_HEADER = "Idempotency-Key"


async def run_idempotent(
    request: Request,
    records: IdempotencyRecords,
    *,
    username: str,
    scope: str,
    client_key: str | None,
    payload: Any,
    work: Callable[[], Awaitable[BaseModel | Rendered]],
    rebuild: Callable[[str], Awaitable[BaseModel]],
    status_code: int = 201,
) -> Response:
    """Do `work` once per key: a replay returns the first status and body and changes nothing.

    If the work committed but its response was never saved (the process died in between), a
    replay answers with `rebuild(result_id)`: the result rebuilt from the ledger entry or order
    the work created, whose id went into the work's own transaction.
    """
    outcome = await idempotent_outcome(
        request,
        records,
        username=username,
        scope=scope,
        client_key=client_key,
        payload=payload,
        work=work,
        rebuild=rebuild,
        status_code=status_code,
    )
    return _json(outcome.body, outcome.status_code)


async def idempotent_outcome(
    request: Request,
    records: IdempotencyRecords,
    *,
    username: str,
    scope: str,
    client_key: str | None,
    payload: Any,
    work: Callable[[], Awaitable[BaseModel | Rendered]],
    rebuild: Callable[[str], Awaitable[BaseModel]],
    status_code: int = 201,
) -> StoredResponse:
    """`run_idempotent`'s status and body, for a caller that answers in another shape (the compat API)."""
    if client_key is None:
        return StoredResponse(status_code, render(await work()))
    begun = await records.begin(username, scope, client_key, request_fingerprint(payload))
    if isinstance(begun, StoredResponse):
        return begun
    if isinstance(begun, Applied):
        body = render(await rebuild(begun.result_id))
        await records.complete_applied(begun, status_code, body)
        return StoredResponse(status_code, body)
    try:
        with applying(records.apply_op(begun)):
            result = await work()
    except CnopError as exc:
        if exc.status < 500 and not isinstance(exc, IdempotencyInProgress):
            errors = exc.errors if isinstance(exc, ValidationFailed) else None
            problem = problem_response(request, exc.status, exc.code, exc.title, exc.detail, errors)
            await records.finish(begun, exc.status, bytes(problem.body))
            return StoredResponse(exc.status, bytes(problem.body))
        await records.abandon(begun)
        raise
    except BaseException:
        await records.abandon(begun)
        raise
    body = render(result)
    await records.finish(begun, status_code, body)
    return StoredResponse(status_code, body)


def _json(body: bytes, status_code: int) -> Response:
    media = "application/problem+json" if status_code >= 400 else "application/json"
    return Response(body, status_code=status_code, media_type=media)
