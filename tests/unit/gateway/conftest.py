"""A small FastAPI app with the gateway's middleware and exception handlers, for these tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
from structlog.testing import capture_logs

from cnop.common.config import Settings
from cnop.common.exceptions import (
    InsufficientFunds,
    LoginBlocked,
    OrderNotFound,
    PriceUnavailable,
    RateLimited,
    ValidationFailed,
)
from cnop.common.health import HealthCheck, health_router
from cnop.common.metrics import Metrics, metrics_router
from cnop.common.web.problems import install_exception_handlers
from cnop.common.web.request_user import bind_request_user
from cnop.gateway.middleware import UserIdentifier, install_middleware

SECRET = "hunter2-database-password"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"rate_limit_per_ip": "1000/minute", "rate_limit_per_user": "1000/minute"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


class DepositIn(BaseModel):
    amount: Decimal = Field(gt=0)
    note: str | None = Field(default=None, max_length=5)


@dataclass
class GatewayApp:
    app: FastAPI
    metrics: Metrics
    health: HealthCheck
    calls: list[str] = field(default_factory=list)


def build_app(
    settings: Settings | None = None,
    identify_user: UserIdentifier | None = None,
    health: HealthCheck | None = None,
) -> GatewayApp:
    settings = settings or make_settings()
    metrics = Metrics()
    health = health or HealthCheck(service="gateway", version="9.9.9")
    app = FastAPI()
    result = GatewayApp(app, metrics, health)
    install_exception_handlers(app)
    install_middleware(app, settings, metrics, identify_user)

    api = APIRouter(prefix="/api/v1")

    @api.get("/ping")
    async def ping(request: Request) -> dict[str, Any]:
        result.calls.append("ping")
        return {"request_id": request.state.request_id, "client_ip": request.state.client_ip}

    @api.get("/context")
    async def context() -> dict[str, Any]:
        import structlog

        return dict(structlog.contextvars.get_contextvars())

    @api.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        bind_request_user(request, "alice")
        import structlog

        return dict(structlog.contextvars.get_contextvars())

    @api.get("/cached")
    async def cached() -> JSONResponse:
        return JSONResponse({}, headers={"Cache-Control": "max-age=60"})

    @api.post("/balance/deposit")
    async def deposit(body: DepositIn) -> dict[str, str]:
        return {"amount": str(body.amount)}

    orders = APIRouter(prefix="/orders")

    @orders.get("/{order_id}")
    async def get_order(
        order_id: str = Path(pattern=r"^[A-Za-z0-9_-]{10,64}$"), limit: int = Query(50, ge=1, le=100)
    ) -> dict[str, str]:
        return {"order_id": order_id}

    @orders.delete("/{order_id}")
    async def cancel_order(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    api.include_router(orders)

    errors: dict[str, Callable[[], Exception]] = {
        "boom": lambda: RuntimeError(f"connection to db failed, password={SECRET}"),
        "insufficient": lambda: InsufficientFunds("Available 10.00 USD is less than 20.00 USD"),
        "invalid": lambda: ValidationFailed.field("amount", "must be positive"),
        "order": lambda: OrderNotFound(),
        "price": lambda: PriceUnavailable(),
        "limited": lambda: RateLimited(retry_after=7),
        "blocked": lambda: LoginBlocked(retry_after=120),
    }

    @api.get("/raise/{name}")
    async def raise_error(name: str) -> None:
        raise errors[name]()

    @api.get("/decode")
    async def decode() -> None:
        import json

        json.loads("{not json")

    app.include_router(api)
    app.include_router(health_router(health))
    app.include_router(metrics_router(metrics))
    return result


@pytest.fixture
def gateway() -> GatewayApp:
    return build_app()


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Keep structlog's default console renderer (and its slow rich tracebacks) out of the run."""
    with capture_logs():
        yield
