"""A real `cnop serve` process on 127.0.0.1 for black-box tests of the HTTP server layer (raw sockets too).

Started with its own data folder and store in a temporary directory, on a free port, with any
`CNOP_*` settings the test gives; stopped (SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

CNOP = str(Path(sys.executable).with_name("cnop"))
TEST_SECRET = "system-test-secret-that-is-long-enough-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CnopServer:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def base_env(workdir: Path, settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNOP_") or k.startswith("CNOP_TEST_")}
    env.update(
        {
            "CNOP_STORE": f"sqlite:///{workdir / 'data' / 'cnop.db'}",
            "CNOP_JWT_SECRET": TEST_SECRET,
            "CNOP_PRICE_SOURCE": "simulated",
            "CNOP_PRICE_TICK_SECONDS": "0.2",
            "CNOP_LOG_LEVEL": "WARNING",
        }
    )
    env.update(settings)
    return {k: v for k, v in env.items() if v is not None}


@contextlib.contextmanager
def cnop_server(
    workdir: Path,
    settings: Mapping[str, str] | None = None,
    *,
    unset: tuple[str, ...] = (),
    ready_timeout: float = 60.0,
) -> Iterator[CnopServer]:
    """Run `cnop serve` until the block ends; `unset` drops settings the defaults would give."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    env = base_env(workdir, settings or {})
    for name in unset:
        env.pop(name, None)
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CNOP, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = CnopServer(process, port, workdir, log_path)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        server.stop()


def wait_ready(server: CnopServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"cnop serve exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"cnop serve did not answer /health within {timeout:.0f} s:\n{server.log()[-3000:]}")


def raw_exchange(port: int, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return read_until_closed(sock, read_timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
