"""configure_logging: JSON lines with context and tracebacks, stdlib and uvicorn routed through it.

Run in a child interpreter: logging configuration is process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging
    import structlog
    from cnop.common.config import Settings
    from cnop.common.logging import configure_logging, get_logger

    settings = Settings(_env_file=None, log_json={log_json}, log_level="INFO")
    configure_logging(settings)
    configure_logging(settings)  # idempotent
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_CnopHandler"]
    assert len(handlers) == 1, handlers

    log = get_logger("cnop.test")
    structlog.contextvars.bind_contextvars(request_id="rid-7", user="alice")
    log.debug("hidden")
    log.info("hello", answer=42)
    logging.getLogger("uvicorn.error").warning("from %s", "uvicorn")
    logging.getLogger("uvicorn.access").info("quiet access line")

    def login(password):
        raise ValueError("boom")

    try:
        login("s3cret-password")
    except ValueError:
        log.exception("failed")
    """
)


def run(log_json: bool) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(log_json=log_json)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr.strip().splitlines()


def test_json_lines_with_timestamp_level_context_and_traceback() -> None:
    lines = [json.loads(line) for line in run(log_json=True)]

    assert [line["event"] for line in lines] == ["hello", "from uvicorn", "failed"]
    hello, uvicorn, failed = lines
    assert hello["level"] == "info"
    assert hello["logger"] == "cnop.test"
    assert hello["answer"] == 42
    assert hello["request_id"] == "rid-7"
    assert hello["user"] == "alice"
    assert hello["timestamp"].endswith("Z")
    assert "T" in hello["timestamp"]
    assert uvicorn["logger"] == "uvicorn.error"
    assert uvicorn["level"] == "warning"
    assert uvicorn["request_id"] == "rid-7"
    assert failed["level"] == "error"
    [exception] = failed["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "boom"
    assert any(frame["name"] == "login" for frame in exception["frames"])
    assert "s3cret-password" not in json.dumps(failed)  # no locals in the log


def test_console_lines_when_json_is_off() -> None:
    text = "\n".join(run(log_json=False))

    assert "hello" in text
    assert "rid-7" in text
    assert "ValueError" in text
    assert "s3cret-password" not in text
