"""structlog configuration, in one place.

JSON lines for machines (production, containers, CI), a readable console renderer for a
person at a terminal. Standard-library logging (aiohttp, asyncpg, botocore) is routed through
the same processors so every line has one shape.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from http import HTTPStatus
from typing import Literal

import structlog
from aiohttp.http_exceptions import HttpProcessingError

Format = Literal["auto", "console", "json"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(fmt: Format = "auto", level: str = "info") -> None:
    """Configure structlog and stdlib logging to write to stderr.

    ``auto`` picks the console renderer when stderr is a terminal and JSON otherwise.
    Safe to call more than once (the last call wins).
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # Never show locals in tracebacks: a frame of the HTTP client holds the Authorization
        # header, one of the database driver the DSN.
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # TensorFlow's C++ runtime logs to stderr on its own, read once when it is imported (the
    # model server and training import it later, in this process or a child): hide its INFO
    # lines at warning, its warnings too at error. An explicit setting is kept.
    if level in {"warning", "error"}:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if level == "warning" else "2")
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("aiohttp.access", "botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, MalformedRequests)]
    server.addFilter(MalformedRequests())


class MalformedRequests(logging.Filter):
    """Turns aiohttp's log of a request its HTTP parser refused (an over-long line or header,
    bytes a URL may not hold, too many headers: a 400 before any route runs) from an ERROR with
    a traceback into one WARNING line, at most one per :attr:`INTERVAL_S` with the count of
    those it held back. Any client can send such requests: each must not cost a traceback in
    the logs. Every other record of ``aiohttp.server`` passes unchanged."""

    INTERVAL_S = 10.0

    def __init__(self) -> None:
        super().__init__()
        self._last = -self.INTERVAL_S
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not HTTPStatus.BAD_REQUEST <= exc.code < HTTPStatus.INTERNAL_SERVER_ERROR:
            return True
        now = time.monotonic()
        if now - self._last < self.INTERVAL_S:
            self._held += 1
            return False
        held, self._last, self._held = self._held, now, 0
        reason = f"{type(exc).__name__}: {exc.message}"[:200]
        record.msg = "http.malformed_request status=%d reason=%r held_back=%d"
        record.args = (exc.code, reason, held)
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:  # lowered, never raised (aiohttp logs some at DEBUG)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
