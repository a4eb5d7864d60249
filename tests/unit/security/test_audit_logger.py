"""AuditLogger: one structured `audit.*` event per call, with no secret in it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from cnop.common.security import AuditLogger

PASSWORD = "Correct-Horse-42"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"

CASES: list[tuple[Callable[[AuditLogger], None], str, str, dict[str, Any]]] = [
    (
        lambda audit: audit.log_login_success("alice", ip_address="10.0.0.1", user_agent="curl/8"),
        "audit.login_success",
        "info",
        {"username": "alice", "ip_address": "10.0.0.1", "user_agent": "curl/8"},
    ),
    (
        lambda audit: audit.log_login_failure("mallory", ip_address="10.0.0.2"),
        "audit.login_failure",
        "warning",
        {"username": "mallory", "ip_address": "10.0.0.2", "reason": "invalid_credentials"},
    ),
    (
        lambda audit: audit.log_login_failure("mallory", reason="login_blocked"),
        "audit.login_failure",
        "warning",
        {"username": "mallory", "ip_address": None, "reason": "login_blocked"},
    ),
    (
        lambda audit: audit.log_logout("alice", ip_address="10.0.0.1"),
        "audit.logout",
        "info",
        {"username": "alice", "ip_address": "10.0.0.1"},
    ),
    (
        lambda audit: audit.log_password_change("alice"),
        "audit.password_change",
        "info",
        {"username": "alice", "ip_address": None},
    ),
    (
        lambda audit: audit.log_access_denied("alice", "/api/v1/admin", "role customer"),
        "audit.access_denied",
        "warning",
        {"username": "alice", "resource": "/api/v1/admin", "reason": "role customer"},
    ),
    (
        lambda audit: audit.log_access_denied(None, "/api/v1/balance", "no token"),
        "audit.access_denied",
        "warning",
        {"username": None, "resource": "/api/v1/balance", "reason": "no token"},
    ),
    (
        lambda audit: audit.log_registration("carol", ip_address="10.0.0.3"),
        "audit.registration",
        "info",
        {"username": "carol", "ip_address": "10.0.0.3"},
    ),
    (
        lambda audit: audit.log_token_revoked("alice", jti="01JD3Q", reason="password_change"),
        "audit.token_revoked",
        "info",
        {"username": "alice", "jti": "01JD3Q", "reason": "password_change"},
    ),
]


@pytest.mark.parametrize(("call", "event", "level", "fields"), CASES, ids=[case[1] for case in CASES])
def test_each_method_writes_one_structured_event(
    call: Callable[[AuditLogger], None], event: str, level: str, fields: dict[str, Any]
) -> None:
    audit = AuditLogger()
    with capture_logs() as logs:
        call(audit)
    assert logs == [{"event": event, "log_level": level, "logger": "cnop.audit", **fields}]


def test_no_event_contains_a_password_or_a_token() -> None:
    audit = AuditLogger()
    with capture_logs() as logs:
        # What a login handler holds while it logs: the username, the password, the token.
        audit.log_login_failure("alice", ip_address="10.0.0.1")
        audit.log_login_success("alice", ip_address="10.0.0.1", user_agent="browser")
        audit.log_password_change("alice")
        audit.log_token_revoked("alice", jti="01JD3Q")
        audit.log_logout("alice")
    assert len(logs) == 5
    text = repr(logs)
    assert PASSWORD not in text
    assert TOKEN not in text
    for entry in logs:
        assert not {"password", "token", "access_token", "password_hash"} & set(entry)


def test_client_supplied_text_is_capped_and_stripped_of_control_characters() -> None:
    audit = AuditLogger()
    with capture_logs() as logs:
        audit.log_login_failure("eve\nadmin logged in\r" + "x" * 1000, ip_address="10.0.0.9")
    [entry] = logs
    assert "\n" not in entry["username"]
    assert "\r" not in entry["username"]
    assert entry["username"].startswith("eve?admin logged in?")
    assert len(entry["username"]) == 256


def test_a_logger_made_before_logging_is_captured_still_reaches_the_capture() -> None:
    audit = AuditLogger()
    audit.log_logout("alice")  # resolves the logger once, outside the capture
    with capture_logs() as logs:
        audit.log_logout("bob")
    assert [entry["username"] for entry in logs] == ["bob"]
