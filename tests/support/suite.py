"""The whole test suite as `make test` runs it: parallel tests first, then the system group.

1. One DynamoDB Local is started for both runs (unless `CNOP_TEST_DYNAMODB_ENDPOINT` names one
   that is already running) and its endpoint is exported to every pytest process.
2. `pytest -n N -m "not system"`: unit, conformance and API tests spread over xdist workers.
3. `pytest -m system`: tests that start real processes (servers, workers, Redis, kill tests,
   browsers), one at a time, after the parallel run, so they never compete with it for the CPU.

Extra arguments are passed to both pytest runs. The exit code is the first failing run's; a run
that collects no test at all counts as a failure for the parallel run (there must be tests) and
as success for the system group (it may be empty when deselected by `-k` or `-m`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack

NO_TESTS_COLLECTED = 5
WORKERS_ENV = "CNOP_TEST_WORKERS"
ENDPOINT_ENV = "CNOP_TEST_DYNAMODB_ENDPOINT"


def _engines() -> list[str]:
    return [e.strip() for e in os.environ.get("CNOP_TEST_ENGINES", "sqlite,dynamodb").split(",") if e.strip()]


def _pytest(args: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", *args]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command)


def main(argv: list[str]) -> int:
    workers = os.environ.get(WORKERS_ENV, str(min(os.cpu_count() or 2, 4)))
    with ExitStack() as stack:
        if "dynamodb" in _engines() and not os.environ.get(ENDPOINT_ENV):
            from tests.support.dynamodb_local import DynamoDBLocal

            server = stack.enter_context(DynamoDBLocal.start())
            os.environ[ENDPOINT_ENV] = server.endpoint
            print(f"DynamoDB Local for the whole suite: {server.endpoint}", flush=True)
        parallel = _pytest(["-n", workers, "-m", "not system", *argv])
        if parallel == NO_TESTS_COLLECTED:
            print("no tests were collected in the parallel run: failing", flush=True)
            return 1
        if parallel != 0:
            return parallel
        system = _pytest(["-p", "no:xdist", "-m", "system", *argv])
        if system == NO_TESTS_COLLECTED:
            return 0
        return system


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
