"""Routes whose JSON bodies are read exactly (`cnop.common.jsonio.loads_request`).

Every JSON number is read from its text (never through float); `NaN`, `Infinity` and number
texts over 40 characters reach the field they were sent for as a refusal that names it; a key
repeated in one object is a 422 naming that key (checked before the body is validated, so
nothing runs on such a body).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.jsonio import DuplicateKey, loads_request


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


class ExactJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        reads_body = self.body_field is not None

        async def exact_handler(request: Request) -> Response:
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
