"""The baseline: a bare FastAPI app with one POST endpoint that parses an order body and returns it.

It is what this stack (uvicorn + uvloop + httptools + FastAPI + pydantic) does with no business
logic, no middleware, no auth and no store; the benchmark reports every scenario as a ratio to it.
The model mirrors the order body of `POST /api/v1/orders` (exact Decimals, the same enum and
asset-id pattern) without importing the project, so that a change in `src/` never moves the baseline.

Run: `uvicorn --factory benchmarks.baseline_app:create_app`.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, Field


class OrderType(StrEnum):
    MARKET_BUY = "market_buy"
    MARKET_SELL = "market_sell"
    LIMIT_BUY = "limit_buy"
    LIMIT_SELL = "limit_sell"


class OrderBody(BaseModel):
    order_type: OrderType
    asset_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,10}$")]
    quantity: Annotated[Decimal, Field(gt=0)]
    price: Annotated[Decimal | None, Field(gt=0)] = None


def create_app() -> FastAPI:
    app = FastAPI(title="cnop benchmark baseline", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/api/v1/orders", status_code=201)
    async def create_order(body: OrderBody) -> OrderBody:
        return body

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app
