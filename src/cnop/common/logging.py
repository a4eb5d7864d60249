"""Logging: one structlog pipeline for our logs and the standard library's (uvicorn's too).

Every line is one JSON object (or a coloured console line when `log_json` is false) with an ISO
UTC timestamp, the level, the logger name, whatever is bound in structlog's contextvars
(`request_id`, `user`) and, for exceptions, the traceback (without local variables). Tracebacks
go to the log, never to a response. Lines go to stderr, so CLI output on stdout stays clean.

structlog's own events skip the `logging` module (no `LogRecord`s, no handler chain): the access
log line runs on every request. Records from `logging` (uvicorn, libraries) are rendered by the
same processors through a handler, and both write through one writer and one lock.

Call `configure_logging` once at start-up; calling it again is harmless, but loggers already
used keep the level they were first used with. Run uvicorn with `log_config=None`, or it
replaces this set-up with its own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import FilteringBoundLogger, Processor

from cnop.common.config import Settings

# uvicorn's loggers: their handlers are removed so that their records reach ours through the root.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# The gateway writes one access line per request, with the request id; uvicorn's would repeat it,
# and the cloud gateway's HTTP client would add one per upstream request.
_QUIETED_LOGGERS = {"uvicorn.access": logging.WARNING, "httpx2": logging.WARNING, "httpcore2": logging.WARNING}
_LOG_METHODS = ("msg", "debug", "info", "warning", "warn", "error", "err", "critical", "exception", "fatal")


class _NamedLogger:
    """What structlog writes to: a name for `add_logger_name`, the shared writer for output."""

    def __init__(self, name: str, writer: structlog.WriteLogger) -> None:
        self.name = name
        for method in _LOG_METHODS:
            setattr(self, method, writer.msg)


class _NamedLoggerFactory:
    def __init__(self, writer: structlog.WriteLogger) -> None:
        self._writer = writer

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(str(args[0]) if args else "", self._writer)


class _CnopHandler(logging.Handler):
    """Writes stdlib records, rendered by structlog's processors, through the shared writer."""

    def __init__(self, writer: structlog.WriteLogger) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _level(name: str) -> int:
    level = logging.getLevelNamesMapping().get(name.strip().upper())
    if level is None:
        raise ValueError(f"unknown log level {name!r}")
    return level


def _renderers(json: bool) -> list[Processor]:
    if json:
        # No locals in the log: a login handler's locals hold a password.
        return [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    return [
        structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    ]


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library through one set of processors. Safe to call again."""
    level = _level(settings.log_level)
    writer = structlog.WriteLogger(stream if stream is not None else sys.stderr)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderers = _renderers(settings.log_json)

    # Mutate structlog's processor list in place: loggers cached before a reconfiguration keep a
    # reference to it (`structlog.testing.capture_logs` relies on the same).
    processors = cast(list[Processor], structlog.get_config()["processors"])
    processors[:] = [*shared, structlog.processors.StackInfoRenderer(), *renderers]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedLoggerFactory(writer),
        context_class=dict,
        cache_logger_on_first_use=True,
    )

    handler = _CnopHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
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
    for name, quiet in _QUIETED_LOGGERS.items():
        if name not in _UVICORN_LOGGERS:
            logging.getLogger(name).setLevel(max(level, quiet))


def get_logger(name: str, **initial_values: Any) -> FilteringBoundLogger:
    """A logger named like a stdlib one (`cnop.gateway.access`); the name is in every line."""
    return cast(FilteringBoundLogger, structlog.get_logger(name, **initial_values))
