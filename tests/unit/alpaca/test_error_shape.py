"""`AlpacaErrorShape`: any problem document answered under /alpaca leaves in Alpaca's shape."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from starlette.types import Receive, Scope, Send

from cnop.gateway.alpaca import AlpacaErrorShape


def problem_app(status: int, code: str, chunks: int = 1):  # type: ignore[no-untyped-def]
    """An ASGI app that refuses every request the way a middleware does (413, 429, 503, ...)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps({"type": "t", "title": "T", "status": status, "detail": f"refused: {code}",
                           "code": code, "request_id": "abc"}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"7"), (b"x-request-id", b"abc")]})
        step = max(1, len(body) // chunks)
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1})

    return app


@pytest.mark.parametrize(
    ("status", "code", "alpaca"),
    [(413, "payload_too_large", (413, 41310000)), (429, "rate_limited", (429, 42910000)),
     (503, "service_unavailable", (503, 50310000)), (500, "internal_error", (500, 50010000))],
)
@pytest.mark.parametrize("chunks", [1, 3])
async def test_a_middleware_refusal_under_the_prefix_is_rewritten_whole(
    status: int, code: str, alpaca: tuple[int, int], chunks: int
) -> None:
    app = AlpacaErrorShape(problem_app(status, code, chunks))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/alpaca/v2/orders", content=b"x" * 10)
    assert (r.status_code, r.json()) == (alpaca[0], {"code": alpaca[1], "message": f"refused: {code}"})
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["retry-after"] == "7" and r.headers["x-request-id"] == "abc"
    assert r.headers["cache-control"] == "no-store"


async def test_outside_the_prefix_problems_stay_problems() -> None:
    app = AlpacaErrorShape(problem_app(429, "rate_limited"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for path in ("/api/v1/orders", "/alpacax/v2/orders"):
            r = await client.get(path)
            assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "rate_limited"
