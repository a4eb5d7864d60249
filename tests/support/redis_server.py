"""A real `redis-server` for tests: on a free 127.0.0.1 port, nothing kept on disk, always stopped.

`scripts/install-redis.sh` (run by `make test`) installs Debian's `redis-server` when missing.
A missing binary fails loudly: Redis tests are never skipped silently.

`RedisServer` can be stopped and started again **on the same port** (the outage tests: clients
keep their URL and must reconnect by themselves). Every start is a fresh, empty server.

    with RedisServer.start() as redis:
        redis.url        # redis://127.0.0.1:PORT/0
        redis.stop()     # Redis is down (clients see connection refused)
        redis.restart()  # back, same port, empty
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING (no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process (see the module). Use `RedisServer.start()` as a context manager."""

    def __init__(self, port: int, workdir: Path, *, password: str | None = None) -> None:
        self.port = port
        self.workdir = workdir
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @classmethod
    @contextlib.contextmanager
    def start(cls, *, password: str | None = None) -> Iterator[RedisServer]:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: run scripts/install-redis.sh (or make deps-redis)", pytrace=False
            )
        with tempfile.TemporaryDirectory(prefix="cnop-redis-") as workdir:
            server = cls(free_port(), Path(workdir), password=password)
            try:
                server.restart()
                yield server
            finally:
                server.stop()
                if server._log is not None:
                    server._log.close()

    def command(self) -> list[str]:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def restart(self) -> None:
        """Start the server (again) on the same port, and wait until it answers PING."""
        if self.running:
            return
        if self._log is None:
            self._log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{self.log()}", pytrace=False)
            # With a password PING is refused (-NOAUTH), which still proves the server is up.
            if answers_ping(self.port) or (self.password and self._answers_at_all()):
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer within {START_TIMEOUT_SECONDS:.0f} s:\n{self.log()}", pytrace=False)

    def _answers_at_all(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"-")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port stays this server's for `restart()`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def flush(self) -> None:
        """Drop every key (between tests sharing the session's server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"FLUSHALL\r\n")
            if not sock.recv(64).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL refused")
