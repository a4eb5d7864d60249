"""The HTTP server layer of a real `cnop serve`, attacked from 127.0.0.1 as the security review did.

Findings 1-3 of the edge review (spoofed X-Forwarded-For, unbounded request heads, connections
kept forever) live below the app, so only a real server on a real socket can show them fixed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.edge_server import CnopServer, cnop_server, raw_exchange, read_until_closed
from tests.support.wire import read, usd

pytestmark = pytest.mark.system

PASSWORD = "Str0ng!Passw0rd"
MB = 1024 * 1024


def register_and_login(http: httpx.Client, username: str) -> dict[str, str]:
    body = {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
        "first_name": "Eve",
        "last_name": "Tester",
    }
    r = http.post("/api/v1/auth/register", json=body)
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {read(r)['access_token']}"}


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_server_problem(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """A refusal from the server layer: problem+json with a request id, and the connection closed."""
    got, headers, body = parse_response(raw)
    assert got == status, raw[:500]
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status and problem["code"] == code
    assert problem["type"] == f"https://cnop.dev/problems/{code}"
    assert problem["request_id"] == headers["x-request-id"] and len(problem["request_id"]) == 32
    return problem


def send_in_background(port: int, payload_parts: Iterator[bytes]) -> tuple[threading.Thread, dict[str, Any]]:
    """Stream `payload_parts` on a new connection from a thread; record what was sent and answered."""
    outcome: dict[str, Any] = {"sent": 0, "response": b""}

    def run() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            try:
                for part in payload_parts:
                    sock.sendall(part)
                    outcome["sent"] += len(part)
            except OSError:
                pass  # the server closed the connection while we were still sending
            outcome["response"] = read_until_closed(sock, 20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CnopServer]:
    settings = {
        "CNOP_SERVER_HEADER_TIMEOUT_SECONDS": "1",
        "CNOP_SERVER_MAX_CONNECTIONS_PER_IP": "12",
    }
    with cnop_server(tmp_path_factory.mktemp("edges"), settings) as running:
        yield running


# --- finding 1: the app alone decides who the client is ---------------------------------------


def test_a_rotating_spoofed_forwarded_for_does_not_dodge_the_login_guard(tmp_path: Path) -> None:
    with cnop_server(tmp_path, {"CNOP_LOGIN_GUARD_FAILURES": "5"}) as running, running.client() as http:
        register_and_login(http, "victim_01")
        statuses = []
        for i in range(8):
            r = http.post(
                "/api/v1/auth/login",
                json={"username": "victim_01", "password": "Wrong!Passw0rd1"},
                headers={"X-Forwarded-For": f"198.51.100.{i + 1}", "X-Real-IP": f"198.51.100.{i + 1}"},
            )
            statuses.append((r.status_code, read(r)["code"]))
        assert statuses[:5] == [(401, "invalid_credentials")] * 5
        assert statuses[5:] == [(403, "login_blocked")] * 3
        # The peer itself is blocked now, so even the right password (with yet another header) is refused.
        r = http.post(
            "/api/v1/auth/login",
            json={"username": "victim_01", "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.99"},
        )
        assert r.status_code == 403 and read(r)["code"] == "login_blocked"
        assert int(r.headers["retry-after"]) > 0


def test_a_rotating_spoofed_forwarded_for_does_not_dodge_the_per_ip_rate_limit(tmp_path: Path) -> None:
    with cnop_server(tmp_path, {"CNOP_RATE_LIMIT_PER_IP": "10/minute"}) as running, running.client() as http:
        answers = [
            http.get("/api/v1/inventory/assets", headers={"X-Forwarded-For": f"192.0.2.{i}"}) for i in range(1, 13)
        ]
        assert [r.status_code for r in answers] == [200] * 10 + [429, 429]
        assert [r.headers["x-ratelimit-limit"] for r in answers] == ["10"] * 12
        assert read(answers[-1])["code"] == "rate_limited" and int(answers[-1].headers["retry-after"]) > 0


def test_forwarded_for_is_believed_only_from_a_configured_proxy(tmp_path: Path) -> None:
    settings = {"CNOP_TRUSTED_PROXIES": "127.0.0.1", "CNOP_LOGIN_GUARD_FAILURES": "3"}
    with cnop_server(tmp_path, settings) as running, running.client() as http:
        register_and_login(http, "proxied_01")

        def login(client_ip: str, password: str) -> int:
            r = http.post(
                "/api/v1/auth/login",
                json={"username": "proxied_01", "password": password},
                headers={"X-Forwarded-For": client_ip},
            )
            return r.status_code

        assert [login("203.0.113.7", "Wrong!Passw0rd1") for _ in range(4)] == [401, 401, 401, 403]
        # Another client behind the same proxy is not blocked: the app judged the proxy's header.
        assert login("203.0.113.8", PASSWORD) == 200
        assert login("203.0.113.7", PASSWORD) == 403


# --- finding 2: request heads are bounded -------------------------------------------------------


def test_a_64_mb_header_is_431_without_reading_it_and_others_are_served_meanwhile(server: CnopServer) -> None:
    def parts() -> Iterator[bytes]:
        yield b"GET /api/v1/inventory/assets HTTP/1.1\r\nHost: localhost\r\nX-Padding: "
        chunk = b"a" * MB
        for _ in range(64):
            yield chunk
        yield b"\r\n\r\n"

    thread, outcome = send_in_background(server.port, parts())
    with server.client() as http:
        health = http.get("/health")
    thread.join(30)
    assert not thread.is_alive()
    assert health.status_code == 200 and read(health)["status"] in {"healthy", "degraded"}
    problem = assert_server_problem(outcome["response"], 431, "headers_too_large")
    assert "16384 bytes" in problem["detail"]
    assert outcome["sent"] < 64 * MB  # refused (and closed) long before the header was all sent


def test_a_32_mb_bearer_token_is_431_and_never_reaches_the_app(server: CnopServer) -> None:
    request = (
        b"GET /api/v1/balance HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + b"x" * (32 * MB) + b"\r\n\r\n"
    )
    assert_server_problem(raw_exchange(server.port, request), 431, "headers_too_large")


def test_a_head_just_within_the_bound_is_served(server: CnopServer) -> None:
    with server.client() as http:
        r = http.get("/api/v1/inventory/assets", headers={"X-Padding": "a" * 15_000})
    assert r.status_code == 200 and len(read(r)["data"]) > 0


def test_a_200_kb_query_string_is_a_414_problem_with_a_request_id(server: CnopServer) -> None:
    request = b"GET /api/v1/inventory/assets?q=" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    problem = assert_server_problem(raw_exchange(server.port, request), 414, "uri_too_long")
    assert problem["title"] == "Request target too long"


# --- finding 3: slow heads time out, connections are capped -------------------------------------


def test_a_head_not_finished_in_time_is_408_and_closed(server: CnopServer) -> None:
    started = time.monotonic()
    raw = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", read_timeout=30)
    assert_server_problem(raw, 408, "request_timeout")
    assert time.monotonic() - started < 25  # closed by the server, not by our read timeout


def test_a_dribbling_client_is_cut_off_at_the_head_timeout(server: CnopServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        deadline = time.monotonic() + 25
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X-Drip: a\r\n")  # a new header line every 0.2 s resets nothing
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if data:
                assert_server_problem(data + read_until_closed(sock, 5), 408, "request_timeout")
            closed = True
        assert closed


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: CnopServer) -> None:
    started = time.monotonic()
    assert raw_exchange(server.port, b"", read_timeout=30) == b""
    assert time.monotonic() - started < 25


def test_connections_past_the_per_ip_cap_are_503_and_freed_slots_are_reused(server: CnopServer) -> None:
    held: list[socket.socket] = []
    try:
        # Each held connection sends a complete request and keeps the connection alive, so the head
        # timeout does not close it; 12 is this server's per-IP cap.
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        assert_server_problem(raw_exchange(server.port, b""), 503, "too_many_connections")
        held.pop().close()
        deadline = time.monotonic() + 20
        while True:
            raw = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            if raw.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert raw.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_the_total_connection_cap_holds_for_many_peers_alike(tmp_path: Path) -> None:
    settings = {"CNOP_SERVER_MAX_CONNECTIONS": "4", "CNOP_SERVER_HEADER_TIMEOUT_SECONDS": "30"}
    with cnop_server(tmp_path, settings) as running:
        held = [socket.create_connection(("127.0.0.1", running.port), timeout=10) for _ in range(4)]
        try:
            time.sleep(0.3)  # let the server accept all four
            problem = assert_server_problem(raw_exchange(running.port, b""), 503, "too_many_connections")
            assert "too many open connections" in problem["detail"].lower()
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            raw = raw_exchange(running.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if raw.startswith(b"HTTP/1.1 200"):
                break
            time.sleep(0.1)
        assert raw.startswith(b"HTTP/1.1 200")


# --- finding 2: request bodies are bounded (app layer, proven through the real server) ----------


def test_a_50_mb_deposit_is_413_before_its_body_is_sent_and_changes_nothing(server: CnopServer) -> None:
    with server.client() as http:
        headers = register_and_login(http, "bigbody_01")
        token = headers["Authorization"]
        # Only the head is sent: the answer comes without the server waiting for the body.
        head = (
            b"POST /api/v1/balance/deposit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b"\r\nContent-Length: " + str(50 * MB).encode() + b"\r\n\r\n"
        )
        status, response_headers, body = parse_response(raw_exchange(server.port, head))
        assert status == 413
        assert response_headers["content-type"].startswith("application/problem+json")
        problem = json.loads(body)
        assert problem["code"] == "body_too_large" and problem["request_id"] == response_headers["x-request-id"]
        assert "65536 bytes" in problem["detail"]
        assert response_headers["x-ratelimit-limit"] and response_headers["connection"] == "close"
        balance = read(http.get("/api/v1/balance", headers=headers))
        assert usd(balance["current_balance"]) == 0
        assert read(http.get("/api/v1/balance/transactions", headers=headers))["transactions"] == []


def test_a_chunked_login_body_past_its_bound_is_413(server: CnopServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"username": "bigbody_02", "password": "'
        for _ in range(40):
            yield b"a" * 1024
        yield b'"}'

    with server.client() as http:
        r = http.post("/api/v1/auth/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and read(r)["code"] == "body_too_large"
    assert "8192 bytes" in read(r)["detail"]


# --- finding 9: a restart keeps everyone signed in (local shape, no CNOP_JWT_SECRET) -------------


def test_without_a_configured_secret_tokens_survive_a_restart(tmp_path: Path) -> None:
    with cnop_server(tmp_path, unset=("CNOP_JWT_SECRET",)) as first, first.client() as http:
        headers = register_and_login(http, "restart_01")
        assert http.get("/api/v1/balance", headers=headers).status_code == 200
    secret_file = tmp_path / "data" / "jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    with cnop_server(tmp_path, unset=("CNOP_JWT_SECRET",)) as second, second.client() as http:
        r = http.get("/api/v1/balance", headers=headers)
        assert r.status_code == 200 and usd(read(r)["current_balance"]) == 0
    secret_file.chmod(0o644)
    with (
        pytest.raises(RuntimeError, match="may be read by others"),
        cnop_server(tmp_path, unset=("CNOP_JWT_SECRET",), ready_timeout=30),
    ):
        pass
