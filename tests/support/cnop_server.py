"""A real `cnop serve` process on 127.0.0.1 for system tests: started on a free port, bounded, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

CNOP = str(Path(sys.executable).with_name("cnop"))
READY_DEADLINE_SECONDS = 90.0
STOP_DEADLINE_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CnopServer:
    url: str
    store: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]


@contextlib.contextmanager
def cnop_serve(tmp_path: Path, **env: str) -> Iterator[CnopServer]:
    """Serve a fresh SQLite store until the block ends; fails with the server's log if it never gets ready."""
    port = free_port()
    store = f"sqlite:///{tmp_path / 'cnop.db'}"
    log_path = tmp_path / "cnop-serve.log"
    environment = {
        **os.environ,
        "CNOP_JWT_SECRET": "system-test-secret-that-is-long-enough-0123456789",
        "CNOP_LOG_LEVEL": "WARNING",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CNOP, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server = CnopServer(f"http://127.0.0.1:{port}", store, process, log_path)
    try:
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"cnop serve exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cnop serve was not ready in {READY_DEADLINE_SECONDS} s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_DEADLINE_SECONDS)
