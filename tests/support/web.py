"""Browser-test support: a real `cnop serve` on 127.0.0.1, Debian's Chromium, axe-core, screenshots.

Playwright drives `/usr/bin/chromium` (installed by `scripts/install-chromium.sh`); it never
downloads a browser. axe-core comes from the npm assets (`make install`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "Str0ng!Passw0rd"
ADMIN = "admin_web_01"
VIEWPORTS = {"desktop": (1280, 800), "phone": (375, 812)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cnop_command() -> list[str]:
    script = Path(sys.executable).parent / "cnop"
    if script.exists():
        return [str(script)]
    found = shutil.which("cnop")
    if found:
        return [found]
    return [sys.executable, "-c", "from cnop.cli import main; main()"]


@dataclass
class Server:
    base: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=20)


def server_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNOP_")}
    env.update(
        {
            "CNOP_STORE": f"sqlite:///{tmp / 'web.db'}",
            "CNOP_PRICE_SOURCE": "manual",
            "CNOP_JWT_SECRET": "browser-test-secret-that-is-long-enough-0123456789",
            "CNOP_MAX_PRICE_AGE_SECONDS": "86400",
            "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
            "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
            "CNOP_PRICE_STREAM_CONNECTIONS_PER_IP": "64",
            "CNOP_PRICE_HISTORY_FLUSH_SECONDS": "1",
            "CNOP_EXPIRY_CHECK_SECONDS": "0.2",
            "CNOP_LOG_LEVEL": "WARNING",
            "CNOP_WEB_ASSETS_DIR": str(ROOT / "node_modules"),
        }
    )
    env.update(overrides)
    return env


def create_admin(env: dict[str, str], username: str = ADMIN) -> None:
    subprocess.run(
        [
            *cnop_command(),
            "user",
            "create",
            username,
            "--email",
            f"{username}@example.com",
            "--admin",
            "--password-stdin",
        ],
        input=PASSWORD.encode(),
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextmanager
def cnop_server(tmp: Path, **overrides: str) -> Iterator[Server]:
    """`cnop serve` on a free 127.0.0.1 port until the block ends (then SIGTERM, then SIGKILL)."""
    env = server_env(tmp, **overrides)
    port = free_port()
    log = tmp / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*cnop_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"cnop serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cnop serve did not come up")
            time.sleep(0.2)
        yield Server(base, env, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def serious_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    # Evaluated over the DevTools protocol, so the page's CSP (no inline scripts) does not apply.
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(page: Any, name: str) -> list[Path]:
    """Full-page screenshots at the desktop and phone sizes; the viewport is put back after."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    saved = []
    for label, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        path = SCREENSHOTS / f"{name}-{label}-{width}x{height}.png"
        page.screenshot(path=str(path), full_page=True)
        saved.append(path)
    if original:
        page.set_viewport_size(original)
    return saved


def wait_until(check: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
