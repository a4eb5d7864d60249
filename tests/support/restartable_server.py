"""A real `cnop serve` that can be killed and started again on the same store (for the kill tests).

The process gets only the environment it is given here (plus PATH and HOME), runs in a
temporary folder (so no `.env` is read), and is always stopped: `stop()` sends SIGTERM, then
SIGKILL; `kill()` sends SIGKILL at once (the crash the kill tests need).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx2 as httpx

START_TIMEOUT_SECONDS = 60.0
JWT_SECRET = "system-test-secret-that-is-long-enough-for-hs256-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cnop_command() -> list[str]:
    """The installed `cnop` entry point next to this interpreter."""
    return [str(Path(sys.executable).with_name("cnop"))]


def store_env(store_url: str, dynamodb_endpoint: str | None = None, table_prefix: str | None = None) -> dict[str, str]:
    """The variables that point a process at a store (SQLite file, or DynamoDB Local)."""
    env = {"CNOP_STORE": store_url}
    if store_url == "dynamodb":
        assert dynamodb_endpoint is not None and table_prefix is not None
        env.update(
            AWS_ENDPOINT_URL_DYNAMODB=dynamodb_endpoint,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            CNOP_DYNAMODB_TABLE_PREFIX=table_prefix,
        )
    return env


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "CNOP_JWT_SECRET": JWT_SECRET,
        "CNOP_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


class CnopServer:
    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = base_env(env)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert self.process is None, "already running"
        self.port = free_port()
        self.starts += 1
        self._log = (self.workdir / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [*cnop_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cnop serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cnop serve did not answer within {START_TIMEOUT_SECONDS:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush; whatever was in flight is cut off."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._closed()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._closed()

    def _closed(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        logs = sorted(self.workdir.glob("server-*.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else ""

    def __enter__(self) -> CnopServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cnop(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a `cnop` command (e.g. `audit`) with the same environment a server would get."""
    return subprocess.run(
        [*cnop_command(), *args],
        cwd=cwd,
        env=base_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
