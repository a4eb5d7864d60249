"""Weak point 15 (local half): raw paths as metric labels, a random request id per log line,
audit events for failures never emitted. (One request id across services is the cloud shape's.)
"""

from __future__ import annotations

import structlog

from tests.support.api import Api
from tests.support.wire import read


async def test_metrics_label_route_templates_never_raw_paths(api: Api) -> None:
    _, headers = await api.register()
    for n in range(3):
        await api.client.get(f"/api/v1/orders/01ARZ3NDEKTSV4RRFFQ69G5F{n:02d}", headers=headers)
    metrics = (await api.client.get("/metrics")).text
    assert "/api/v1/orders/{order_id}" in metrics
    assert "01ARZ3NDEKTSV4RRFFQ69G5F" not in metrics
    await api.client.get("/api/v1/no/such/route/raw-segment-12345")
    metrics = (await api.client.get("/metrics")).text
    # Letters in the segment: digits alone could appear inside a sample's timestamp.
    assert "raw-segment-12345" not in metrics and "/no/such/route" not in metrics


async def test_one_request_id_runs_through_every_log_line_of_a_request(api: Api) -> None:
    username, headers = await api.register()
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        r = await api.client.post(
            "/api/v1/auth/login",
            json={"username": username, "password": "Wrong!Passw0rd1"},
            headers={"X-Request-ID": "trace-me-0001"},
        )
        other = await api.client.get("/api/v1/balance", headers=headers)
    assert r.status_code == 401 and r.headers["x-request-id"] == "trace-me-0001"
    assert read(r)["request_id"] == "trace-me-0001"
    mine = [line for line in lines if line.get("request_id") == "trace-me-0001"]
    events = {line["event"] for line in mine}
    assert {"audit.login_failure", "request"} <= events, lines
    others = {line.get("request_id") for line in lines if line not in mine}
    assert others == {other.headers["x-request-id"]}, lines  # every other line belongs to the other request


async def test_failed_logins_denials_and_revocations_are_audit_events(api: Api) -> None:
    username, headers = await api.register()
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        await api.client.post("/api/v1/auth/login", json={"username": username, "password": "Wrong!Passw0rd1"})
        await api.client.post("/api/v1/auth/login", json={"username": "nobody_here", "password": "Wrong!Passw0rd1"})
        denied = await api.client.post("/api/v1/admin/prices", json={"asset_id": "BTC", "price": "1"}, headers=headers)
        await api.client.post("/api/v1/auth/logout", headers=headers)
    assert denied.status_code == 403
    audit = [line for line in lines if str(line["event"]).startswith("audit.")]
    failures = [line for line in audit if line["event"] == "audit.login_failure"]
    assert {line["username"] for line in failures} == {username, "nobody_here"}
    assert [line["username"] for line in audit if line["event"] == "audit.access_denied"] == [username]
    revoked = [line for line in audit if line["event"] == "audit.token_revoked"]
    assert [(line["username"], line["reason"]) for line in revoked] == [(username, "logout")]
    assert all("request_id" in line for line in audit)
