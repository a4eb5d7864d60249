"""Logging: one structlog pipeline for our logs and the standard library's (uvicorn's too).

Every line is one JSON object (or a coloured console line when `log_json` is false) with an ISO
UTC timestamp, the level, the logger name, whatever is bound in structlog's contextvars
(`request_id`, `user`) and, for exceptions, the traceback. Tracebacks go to the log, never to a
response. Lines are written to stderr so that CLI output on stdout stays clean.

Run uvicorn with `log_config=None`, or it replaces this set-up with its own at start-up.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import Processor

from cnop.common.config import Settings

# uvicorn's own loggers: their handlers are removed so their records reach ours through the root.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# The gateway writes one access line per request with the request id, so uvicorn's is redundant.
_QUIETED_LOGGERS = {"uvicorn.access": logging.WARNING}


class _CnopHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installs, so a second call replaces it instead of adding one."""


def _level(name: str) -> int:
    level = logging.getLevelNamesMapping().get(name.strip().upper())
    if level is None:
        raise ValueError(f"unknown log level {name!r}")
    return level


def _renderer(json: bool) -> list[Processor]:
    if json:
        # Locals stay out of the log: a login handler's locals hold a password.
        return [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    return [
        structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    ]


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library through one formatter. Safe to call again."""
    level = _level(settings.log_level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]

    # Mutate structlog's processor list in place: loggers cached before a reconfiguration hold
    # a reference to it (the same trick `structlog.testing.capture_logs` relies on).
    processors = cast(list[Processor], structlog.get_config()["processors"])
    processors[:] = [
        structlog.stdlib.filter_by_level,
        *shared,
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )

    handler = _CnopHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(settings.log_json),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _CnopHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)

    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(max(level, _QUIETED_LOGGERS.get(name, logging.NOTSET)))


def get_logger(name: str, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named like a stdlib one (`cnop.gateway.access`)."""
    return structlog.stdlib.get_logger(name, **initial_values)
