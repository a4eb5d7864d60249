"""Six wrong log-ins on the web page trip the login guard exactly as API log-ins do (own server:
the block would lock 127.0.0.1 out of the other browser tests' server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.web import PASSWORD, Server, cnop_server
from tests.support.wire import read

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("guard")
    with cnop_server(tmp) as running:
        yield running


def test_six_wrong_web_logins_block_web_and_api_logins_from_the_address(browser: Any, guarded_server: Server) -> None:
    with guarded_server.api() as http:
        r = http.post(
            "/api/v1/auth/register",
            json={
                "username": "guard_victim",
                "email": "gv@example.com",
                "password": PASSWORD,
                "first_name": "G",
                "last_name": "V",
            },
        )
        assert r.status_code == 201
    context = browser.new_context(base_url=guarded_server.base)
    page = context.new_page()
    for attempt in range(1, 7):
        page.goto("/login")
        page.fill("#f-username", "guard_victim")
        page.fill("#f-password", "Wr0ng!Passw0rd" if attempt < 6 else PASSWORD)
        with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as answer:
            page.locator("main button[type=submit]").click()
        alert = page.locator('[data-error-for="_form"]').inner_text()
        if attempt < 6:
            assert answer.value.status == 401 and alert == "Wrong username or password"
        else:
            # The sixth is refused even with the right password, as the API refuses it.
            assert answer.value.status == 403
            assert alert.startswith("Too many failed log-ins from this address")
    assert "cnop_session" not in {c["name"] for c in context.cookies()}
    with guarded_server.api() as http:
        r = http.post("/api/v1/auth/login", json={"username": "guard_victim", "password": PASSWORD})
        assert r.status_code == 403 and read(r)["code"] == "login_blocked"
    context.close()
