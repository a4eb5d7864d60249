"""Fuzzing the /api/v1 OpenAPI document with schemathesis: no 5xx, every error a problem.

Transport: schemathesis's in-process ASGI client, not a real server. On this suite's 2-core CI
machine it sends several times more requests per second than HTTP to a `cnop serve` would, it
needs no port (so it runs among the parallel tests), and what it exercises, the app's parsing,
validation, rules and store, is what the generated inputs can reach; the HTTP server layer
(header limits, timeouts, connection caps) is proven black-box by its own tests through a real
server. The store is a SQLite file; rate limits and the login guard are raised so the fuzzer is
not stopped by them, and a second, short run keeps them on and expects 429s in the contract's
shape.

Every operation is fuzzed with valid (positive) and invalid (negative) inputs, with a customer's
token (an admin's for `/admin`), then the state machine that schemathesis builds from the links
it infers between operations runs (stateful: register, log in, deposit, order, cancel ...).
Each response is checked: never 5xx; a 4xx has `application/problem+json` with `type, title,
status, detail, code, request_id` (status equal to the HTTP status, request id equal to the
`X-Request-ID` header) and, if present, `errors` as a list of `{field, message}`.

`CNOP_FUZZ_REQUESTS` sets the target (default 10,000 requests for the whole run).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi

from cnop.common.entities.user import UserRole
from cnop.common.logging import configure_logging
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest
from tests.support.api import PASSWORD, make_settings

TARGET = int(os.environ.get("CNOP_FUZZ_REQUESTS", "10000"))
# Streams never end by themselves; the event routes have their own tests.
SKIPPED = {("GET", "/api/v1/events")}
# These revoke the token they are sent with: each case gets a token of its own.
REVOKING = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/password")}
RATE_HEADERS = ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def check(self, method: str, path: str, response: Any, sent: dict[str, Any], sent_body: Any = None) -> None:
        """The contract every response must meet, whatever was sent."""
        self.sent += 1
        status = response.status_code
        self.statuses[status] += 1
        where = f"{method} {path} -> {status}"
        if status >= 500:
            self.failures.append(f"{where}: {response.text[:300]}")
            return
        if header(response, "x-request-id") is None:
            self.failures.append(f"{where}: no X-Request-ID header")
        if status == 429:
            missing = [h for h in RATE_HEADERS if header(response, h) is None]
            if missing:
                self.failures.append(f"{where}: a 429 without {missing}")
        if status < 400:
            return
        content_type = header(response, "content-type") or ""
        if not content_type.startswith("application/problem+json"):
            self.failures.append(f"{where}: content-type {content_type!r}: {response.text[:200]}")
            return
        try:
            body = response.json()
        except ValueError:
            self.failures.append(f"{where}: problem body is not JSON: {response.text[:200]}")
            return
        # A replay (same Idempotency-Key, or for orders the same client_order_id, decision 0005)
        # answers the first response's body, request id included.
        # The request's body says whether it carried a client_order_id: a replayed refusal (an
        # unknown asset, say) does not repeat it in the problem body.
        replay = any(name.lower() == "idempotency-key" for name in sent) or _has_client_order_id(path, sent_body)
        problems = problem_violations(body, status, None if replay else header(response, "x-request-id"))
        if isinstance(body, dict):
            self.codes[f"{status} {body.get('code')}"] += 1
        if problems:
            self.failures.append(f"{where}: {'; '.join(problems)}: {body}")


def _has_client_order_id(path: str, body: Any) -> bool:
    return path == "/api/v1/orders" and isinstance(body, dict) and bool(body.get("client_order_id"))


def header(response: Any, name: str) -> str | None:
    """One header of a schemathesis response (its headers map names to lists of values)."""
    for key, values in response.headers.items():
        if key.lower() == name:
            return values[0] if isinstance(values, list) else str(values)
    return None


def problem_violations(body: Any, status: int, request_id: str | None) -> list[str]:
    if not isinstance(body, dict):
        return ["not an object"]
    found = []
    missing = PROBLEM_KEYS - set(body)
    if missing:
        found.append(f"missing {sorted(missing)}")
    if body.get("status") != status:
        found.append(f"status {body.get('status')!r} in the body")
    if not isinstance(body.get("code"), str) or not body.get("code"):
        found.append("no code")
    if not isinstance(body.get("request_id"), str) or (request_id is not None and body["request_id"] != request_id):
        found.append(f"request_id {body.get('request_id')!r} is not the X-Request-ID {request_id!r}")
    errors = body.get("errors")
    if errors is not None and not (
        isinstance(errors, list)
        and all(
            isinstance(e, dict) and isinstance(e.get("field"), str) and isinstance(e.get("message"), str)
            for e in errors
        )
    ):
        found.append(f"errors is not a list of field/message: {errors!r}")
    return found


@dataclass
class Target:
    schema: Any
    client: Any
    customer: dict[str, str]
    admin: dict[str, str]
    tally: Tally

    def fresh_token(self) -> dict[str, str]:
        username = f"fz{time.monotonic_ns() % 10**12:012d}"
        body = {
            "username": username,
            "email": f"{username}@example.com",
            "password": PASSWORD,
            "first_name": "Fuzz",
            "last_name": "Tester",
        }
        assert self.client.post("/api/v1/auth/register", json=body).status_code == 201
        return login(self.client, username)

    def headers_for(self, method: str, path: str) -> dict[str, str]:
        if (method, path) in REVOKING:
            return self.fresh_token()
        return self.admin if path.startswith("/api/v1/admin") else self.customer


def login(client: Any, username: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def create_admin(app_settings: Any) -> None:
    """An admin in the store before the app starts (admins are not made over the API)."""
    container = build_container(app_settings, passwords=PasswordManager(app_settings, argon2_params=TEST_ARGON2_PARAMS))
    await container.store.create_tables()
    request = RegisterRequest(
        username="fuzz_admin", email="fuzz_admin@example.com", password=PASSWORD, first_name="Fuzz", last_name="Admin"
    )
    await container.accounts.register(request, role=UserRole.ADMIN)
    await container.store.close()


def build_target(tmp_path: Path, **overrides: Any) -> Iterator[Target]:
    app_settings = make_settings(store=f"sqlite:///{tmp_path}/fuzz.db", log_level="ERROR", **overrides)
    asyncio.run(create_admin(app_settings))
    container = build_container(app_settings, passwords=PasswordManager(app_settings, argon2_params=TEST_ARGON2_PARAMS))
    app = create_app(app_settings, container=container)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    with asgi.get_client(app) as client:
        body = {
            "username": "fuzz_customer",
            "email": "fuzz_customer@example.com",
            "password": PASSWORD,
            "first_name": "Fuzz",
            "last_name": "Customer",
        }
        assert client.post("/api/v1/auth/register", json=body).status_code == 201
        customer = login(client, "fuzz_customer")
        r = client.post("/api/v1/balance/deposit", json={"amount": "5000"}, headers=customer)
        assert r.status_code == 201, r.text
        admin = login(client, "fuzz_admin")
        yield Target(schema, client, customer, admin, Tally())
    # The app set the process's log level to ERROR (quiet for 10,000 requests); later tests in
    # this worker expect the usual level.
    configure_logging(make_settings())


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from build_target(
        tmp_path,
        rate_limit_per_ip="100000000/minute",
        rate_limit_per_user="100000000/minute",
        login_guard_failures=100000000,
        max_price_age_seconds=86400,  # the catalogue's prices stay tradeable: orders get through
    )


def fuzz_operation(target: Target, operation: Any, mode: GenerationMode, examples: int, seed: int) -> None:
    method, path = operation.method.upper(), operation.path
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy, _seed=st.just(seed))
    def run(case: Any, _seed: int) -> None:
        headers = dict(case.headers or {})
        for name, value in target.headers_for(method, path).items():
            headers.setdefault(name, value)
        response = case.call(session=target.client, headers=headers)
        target.tally.check(method, path, response, headers, case.body)

    try:
        run()
    except Unsatisfiable:
        pass  # no invalid input exists for an operation without parameters or body


def operations(target: Target) -> list[Any]:
    found = []
    for result in target.schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in SKIPPED:
            found.append(operation)
    return found


def run_state_machine(target: Target, steps: int) -> None:
    machine = target.schema.as_state_machine()
    tally = target.tally

    class Fuzzer(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            method, path = case.operation.method.upper(), case.operation.path
            headers = dict(case.headers or {})
            for name, value in target.headers_for(method, path).items():
                headers.setdefault(name, value)
            return {"session": target.client, "headers": headers}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            method, path = case.operation.method.upper(), case.operation.path
            tally.check(method, path, response, kwargs.get("headers") or {}, case.body)

    before = tally.sent
    # The app's store outlives each generated sequence, so which links (rules) are available can
    # differ between sequences; hypothesis then sometimes stops a run with FlakyStrategyDefinition.
    # That is about the generator, not the server: start a fresh run until the budget is spent
    # (bounded). Every response sent in every run is still checked by `tally`.
    for _ in range(5):
        try:
            Fuzzer.run(
                settings=settings(
                    max_examples=max(1, steps // 10),
                    stateful_step_count=10,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate],
                )
            )
        except FlakyStrategyDefinition:
            if tally.sent - before < steps:
                continue
        break
    assert tally.sent > before, "the state machine sent nothing"


SHARDS = 4  # the operations are split over this many tests, so xdist spreads the run
STATEFUL_SHARE = 10  # one tenth of the target goes to the state machine


def shard_target() -> int:
    return math.ceil((TARGET - TARGET // STATEFUL_SHARE) / SHARDS)


def report(name: str, target: Target, started: float) -> None:
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz {name}: {target.tally.sent} requests in {elapsed:.0f} s;"
        f" statuses {dict(sorted(target.tally.statuses.items()))}; problems {dict(target.tally.codes.most_common())}"
    )


def assert_clean(target: Target) -> None:
    failures = sorted(set(target.tally.failures))
    assert not failures, f"{len(target.tally.failures)} bad responses:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("shard", range(SHARDS))
def test_fuzzing_operations_finds_no_5xx_and_only_problem_errors(target: Target, shard: int) -> None:
    started = time.monotonic()
    ops = operations(target)[shard::SHARDS]
    goal = shard_target()
    per_pass = max(1, math.ceil(goal / (2 * len(ops))))
    seed = 0
    # Operations with few possible inputs run out of new examples early; passes repeat (with
    # other random choices) until this shard has sent its share of the target.
    while target.tally.sent < goal:
        before = target.tally.sent
        for operation in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(target, operation, mode, per_pass, seed)
        seed += 1
        assert target.tally.sent > before, "a whole pass generated no request"
    report(f"shard {shard} ({', '.join(f'{o.method.upper()} {o.path}' for o in ops)})", target, started)
    assert target.tally.sent >= goal
    assert_clean(target)


def test_fuzzing_stateful_sequences_finds_no_5xx_and_only_problem_errors(target: Target) -> None:
    started = time.monotonic()
    run_state_machine(target, TARGET // STATEFUL_SHARE)
    report("stateful", target, started)
    assert_clean(target)


@pytest.fixture
def limited_target(tmp_path: Path) -> Iterator[Target]:
    """Rate limits and the login guard as small as a test can reach, for the 429 run."""
    yield from build_target(
        tmp_path, rate_limit_per_ip="40/minute", rate_limit_per_user="30/minute", max_price_age_seconds=86400
    )


def test_fuzzing_with_the_limits_on_meets_429s_in_the_contract_shape(limited_target: Target) -> None:
    target = limited_target
    started = time.monotonic()
    wanted = {("GET", "/api/v1/balance"), ("POST", "/api/v1/auth/login"), ("GET", "/api/v1/inventory/assets")}
    ops = [o for o in operations(target) if (o.method.upper(), o.path) in wanted]
    assert len(ops) == len(wanted)
    for seed in range(3):
        for operation in ops:
            fuzz_operation(target, operation, GenerationMode.POSITIVE, 25, seed)
    report("limits on", target, started)
    assert target.tally.statuses[429] > 0, target.tally.statuses
    assert target.tally.codes["429 rate_limited"] == target.tally.statuses[429]
    assert_clean(target)
