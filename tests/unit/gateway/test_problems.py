"""Errors as RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from cnop.common.web.problems import INTERNAL_ERROR_DETAIL

from .conftest import SECRET, GatewayApp

PROBLEM = "application/problem+json"


def get(gateway: GatewayApp, method: str, path: str, **kwargs: Any) -> Any:
    with TestClient(gateway.app) as client:
        return client.request(method, path, headers={"X-Request-ID": "rid-1"}, **kwargs)


def test_unknown_route_is_a_404_problem(gateway: GatewayApp) -> None:
    response = get(gateway, "GET", "/api/v1/nothing/here")

    assert response.status_code == 404
    assert response.headers["Content-Type"] == PROBLEM
    assert response.json() == {
        "type": "https://cnop.dev/problems/not_found",
        "title": "Not found",
        "status": 404,
        "detail": "The requested resource does not exist.",
        "code": "not_found",
        "request_id": "rid-1",
    }


def test_wrong_method_is_a_405_problem_that_keeps_allow(gateway: GatewayApp) -> None:
    response = get(gateway, "PUT", "/api/v1/orders/ORD-1234567890")

    assert response.status_code == 405
    assert response.headers["Content-Type"] == PROBLEM
    assert "GET" in response.headers["Allow"]
    body = response.json()
    assert body["code"] == "method_not_allowed"
    assert body["status"] == 405
    assert body["type"] == "https://cnop.dev/problems/method_not_allowed"


def test_body_validation_errors_list_field_and_message_without_echoing_input(gateway: GatewayApp) -> None:
    response = get(gateway, "POST", "/api/v1/balance/deposit", json={"amount": "not-a-number", "note": "x" * 40})

    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["title"] == "Request validation failed"
    assert body["request_id"] == "rid-1"
    assert body["errors"] == [
        {"field": "amount", "message": "Input should be a valid decimal"},
        {"field": "note", "message": "String should have at most 5 characters"},
    ]
    assert body["detail"] == "2 fields are invalid; see errors"
    text = response.text
    assert "not-a-number" not in text
    assert "x" * 40 not in text
    assert "pydantic" not in text
    for internal in ('"input"', '"loc"', '"ctx"', '"url"'):
        assert internal not in text


def test_query_and_path_errors_name_their_source(gateway: GatewayApp) -> None:
    response = get(gateway, "GET", "/api/v1/orders/short?limit=0")

    assert response.status_code == 422
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["path.order_id", "query.limit"]


def test_a_single_error_is_spelled_out_in_detail(gateway: GatewayApp) -> None:
    response = get(gateway, "POST", "/api/v1/balance/deposit", json={"amount": "0"})

    assert response.json()["detail"] == "amount: Input should be greater than 0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content": b'{"amount": ', "headers": {"Content-Type": "application/json"}}, "not valid JSON"),
        ({}, "Request body is required"),
        ({"json": [1, 2]}, "Request body must be a JSON object"),
    ],
)
def test_a_broken_body_is_a_422_about_the_body(gateway: GatewayApp, kwargs: dict[str, Any], message: str) -> None:
    with TestClient(gateway.app) as client:
        response = client.post("/api/v1/balance/deposit", **kwargs)

    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert message in error["message"]


def test_json_decode_errors_raised_by_an_endpoint_are_422(gateway: GatewayApp) -> None:
    response = get(gateway, "GET", "/api/v1/decode")

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "body", "message": "Request body is not valid JSON"}]


@pytest.mark.parametrize(
    ("name", "status", "code", "detail"),
    [
        ("insufficient", 422, "insufficient_funds", "Available 10.00 USD is less than 20.00 USD"),
        ("order", 404, "order_not_found", "Order not found"),
        ("price", 503, "price_unavailable", "No fresh market price is available"),
    ],
)
def test_cnop_errors_keep_their_status_code_and_detail(
    gateway: GatewayApp, name: str, status: int, code: str, detail: str
) -> None:
    response = get(gateway, "GET", f"/api/v1/raise/{name}")

    assert response.status_code == status
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["code"] == code
    assert body["type"] == f"https://cnop.dev/problems/{code}"
    assert body["detail"] == detail
    assert body["status"] == status
    assert "errors" not in body


def test_validation_failed_from_a_service_carries_its_errors(gateway: GatewayApp) -> None:
    response = get(gateway, "GET", "/api/v1/raise/invalid")

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "amount", "message": "must be positive"}]
    assert response.json()["detail"] == "amount: must be positive"


def test_rate_limited_and_login_blocked_carry_retry_after(gateway: GatewayApp) -> None:
    limited = get(gateway, "GET", "/api/v1/raise/limited")
    blocked = get(gateway, "GET", "/api/v1/raise/blocked")

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["code"] == "rate_limited"
    assert blocked.status_code == 403
    assert blocked.headers["Retry-After"] == "120"
    assert blocked.json()["code"] == "login_blocked"


def test_an_unexpected_exception_is_a_generic_500_and_its_traceback_is_logged(gateway: GatewayApp) -> None:
    with capture_logs() as logs:
        response = get(gateway, "GET", "/api/v1/raise/boom")

    assert response.status_code == 500
    assert response.headers["Content-Type"] == PROBLEM
    assert response.json() == {
        "type": "https://cnop.dev/problems/internal_error",
        "title": "Internal server error",
        "status": 500,
        "detail": INTERNAL_ERROR_DETAIL,
        "code": "internal_error",
        "request_id": "rid-1",
    }
    for leak in (SECRET, "RuntimeError", "Traceback", "connection to db"):
        assert leak not in response.text

    [entry] = [e for e in logs if e["event"] == "unhandled_exception"]
    assert entry["log_level"] == "error"
    assert entry["path"] == "/api/v1/raise/boom"
    error = entry["exc_info"]
    assert isinstance(error, RuntimeError)
    assert error.__traceback__ is not None


def test_the_exception_handler_alone_also_hides_the_exception() -> None:
    # Without the gateway's middleware, Starlette's outermost handler renders the same 500.
    from fastapi import FastAPI

    from cnop.common.web.problems import install_exception_handlers

    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    with capture_logs(), TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")

    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert SECRET not in response.text
