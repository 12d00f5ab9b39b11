"""How ``prepay run`` logs: a timestamp on every line, plain text or one JSON object a line.

- ``text`` (the default): ``2026-12-01T10:31:13.123Z INFO gateway.daemon: message``, for a
  terminal and for journald, which keeps its own receive time next to the line.
- ``json``: one object a line for log shippers (Vector, Fluent Bit, Promtail) and for
  ``journalctl -o cat``: ``{"at", "level", "logger", "message"}``, plus ``"error"`` and, for a
  bug, ``"traceback"``.

An expected condition gets no traceback: an exception the project raises on purpose
(`PrepayError`: a bad site file on SIGHUP, a store that cannot be written, a device that timed
out) is logged as its message, which says what is wrong; anything else is a bug and keeps its
traceback.

Why no structlog: the standard library's `logging.Formatter` does all of this in a few lines,
and every library the daemon uses (aiomqtt, pymodbus, bleak) already logs through `logging`.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from typing import TextIO

from billing_engine.base.errors import PrepayError


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: sorts as text, and means the same on every box."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _expected(record: logging.LogRecord) -> PrepayError | None:
    """The `PrepayError` the record carries, if it carries one."""
    if record.exc_info is None:
        return None
    exc = record.exc_info[1]
    return exc if isinstance(exc, PrepayError) else None


def _error_text(exc: BaseException) -> str:
    # A multi-line message (every error of a site file) stays readable on one line.
    return " | ".join(str(exc).splitlines()) or type(exc).__name__


class TextFormatter(logging.Formatter):
    """``AT LEVEL LOGGER: MESSAGE``; an expected error's message instead of its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        expected = _expected(record)
        if expected is not None:
            return f"{line}: {_error_text(expected)}"
        if record.exc_info is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "at": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info is not None and record.exc_info[1] is not None:
            entry["error"] = _error_text(record.exc_info[1])
            if _expected(record) is None:
                entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr).

    Like `logging.basicConfig`, which it calls, it does nothing when the process has set up
    logging already (a test running the command in its own process keeps its capture).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
