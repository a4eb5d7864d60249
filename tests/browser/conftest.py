"""Browser tests: a real `cnop serve` (manual prices) and Debian's Chromium through Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.web import CHROMIUM, Server, cnop_server, create_admin, launch_chromium, server_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("web")
    create_admin(server_env(tmp))
    with cnop_server(tmp) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps-browser` (scripts/install-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any, server: Server) -> Iterator[Any]:
    ctx = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 800}, accept_downloads=True)
    ctx.set_default_timeout(15000)
    yield ctx
    ctx.close()
