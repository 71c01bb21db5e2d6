"""One log format for every line a daemon writes: ours, uvicorn's, the worker processes'.

Both daemons (``farm-dispatcher serve`` and its workers, ``farmnode serve``) log to standard
error through one handler on the root logger, with one of two formatters chosen by name
(:data:`FORMATTERS`, the ``log_format`` setting):

- ``text``: ``2025-05-01T09:30:00.123Z INFO    webfarm.server [worker=1]: message``, one
  line per record. Characters that are not printable (a newline, ESC, NUL) are written as
  Python escapes, so nothing a client sends can forge a line or drive a terminal. A
  traceback follows on continuation lines that start with ``  | `` (escaped the same way).
- ``json``: one JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``pid``,
  then ``request_id`` (an admin request's, :data:`request_id`), the fields the process set
  (``worker``), the record's own ``extra={"fields": {...}}``, and ``exception`` (the
  traceback as one string). Only ASCII is written (everything else is a ``\\u`` escape), so
  the line survives any terminal, pipe or journal.

Timestamps are always there: RFC 3339 in UTC with milliseconds (``Z``): lines from several
hosts sort as written, whatever their time zones. A message longer than
:data:`MAX_MESSAGE` characters (a traceback longer than :data:`MAX_TRACEBACK`) is cut, and
says so.

uvicorn's loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) lose their own
handlers and propagate to the root (the listeners pass ``log_config=None``, so uvicorn
never installs its own); their level is at least WARNING unless the daemon logs at DEBUG
(their INFO lines repeat what our own lines say).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, Final, TextIO

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
#: The longest message written (characters); the rest is replaced by a note.
MAX_MESSAGE: Final = 8192
#: The longest traceback written (characters).
MAX_TRACEBACK: Final = 32_768
UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
#: Keys of a JSON line that a record's extra fields cannot replace.
CORE_KEYS: Final = frozenset({"time", "level", "logger", "message", "pid", "exception"})

#: The id of the admin request being handled (set by :class:`dispatcher.requestid.RequestIds`).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "webfarm_request_id", default=None
)


_second: list[Any] = [None, ""]  # the last second formatted, and its text (one per process)


def timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    whole = int(created)
    millis = min(999, int((created - whole) * 1000))
    cached = _second
    if cached[0] != whole:  # strftime once a second, not once a line
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        cached[0] = whole
    return f"{cached[1]}.{millis:03d}Z"


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a note of how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut: {len(text)} characters in all]"


def escaped(text: str) -> str:
    """``text`` with every character that is not printable written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Formatter(logging.Formatter):
    """What both formats share: the message (cut), the traceback, the context fields."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.fields: dict[str, Any] = dict(fields or {})

    def message(self, record: logging.LogRecord) -> str:
        return cut(record.getMessage(), MAX_MESSAGE)

    def trace(self, record: logging.LogRecord) -> str | None:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return None
        parts = []
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)).rstrip())
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info.rstrip())
        return cut("\n".join(parts), MAX_TRACEBACK) if parts else None

    def context(self, record: logging.LogRecord) -> Mapping[str, Any]:
        """``request_id`` (when handling a request), this process's fields, the record's
        (read only: it may be this formatter's own ``fields``)."""
        rid = request_id.get()
        extra = record.__dict__.get("fields")
        if rid is None and not extra:
            return self.fields
        found: dict[str, Any] = {} if rid is None else {"request_id": rid}
        found.update(self.fields)
        if isinstance(extra, Mapping):
            found.update((str(k), v) for k, v in extra.items() if str(k) not in CORE_KEYS)
        return found


class TextFormatter(_Formatter):
    """``TIME LEVEL logger [key=value ...]: message``, one line (a traceback after it on
    ``  | `` lines)."""

    def format(self, record: logging.LogRecord) -> str:
        context = self.context(record)
        where = record.name
        if context:
            where += " [" + " ".join(f"{k}={_text_value(v)}" for k, v in context.items()) + "]"
        line = (
            f"{timestamp(record.created)} {record.levelname:<7} {escaped(where)}: "
            f"{escaped(self.message(record))}"
        )
        trace = self.trace(record)
        if trace is None:
            return line
        return line + "".join(f"\n  | {escaped(part)}" for part in trace.splitlines())


class JsonFormatter(_Formatter):
    """One JSON object per line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.message(record),
            "pid": record.process,
        }
        for key, value in self.context(record).items():
            line.setdefault(key, value)
        trace = self.trace(record)
        if trace is not None:
            line["exception"] = trace
        return _ENCODER.encode(line)


def _text_value(value: Any) -> str:
    text = str(value)
    return text if text and " " not in text and "]" not in text else json.dumps(text)


def _json_value(value: Any) -> str:
    return cut(str(value), MAX_MESSAGE)


_ENCODER = json.JSONEncoder(ensure_ascii=True, default=_json_value, separators=(",", ":"))


#: The formatters by the name ``log_format`` gives.
FORMATTERS: Final[Mapping[str, type[_Formatter]]] = {"text": TextFormatter, "json": JsonFormatter}


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes (never a stale stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def configure_logging(
    level: str, log_format: str, *, fields: Mapping[str, Any] | None = None
) -> bool:
    """Send every record to standard error in ``log_format`` at ``level`` and above.

    Called again (a reload, a worker learning its index), it changes the format, the level
    and (when given) the process's ``fields`` in place. The root logger is left alone when
    something else configured it (a test runner's handlers): returns whether it was ours.
    """
    if level not in LOG_LEVELS or log_format not in FORMATTERS:
        raise ValueError(f"log level {level!r} / format {log_format!r}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, StderrHandler)]
    if len(ours) != len(root.handlers):
        return False
    handler = ours[0] if ours else StderrHandler()
    old = handler.formatter
    kept = old.fields if isinstance(old, _Formatter) else {}
    handler.setFormatter(FORMATTERS[log_format](kept if fields is None else fields))
    if not ours:
        root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = name != "uvicorn.access"  # its lines repeat our access logs
        logger.setLevel(max(quiet, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    return True


__all__ = [
    "FORMATTERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "JsonFormatter",
    "StderrHandler",
    "TextFormatter",
    "configure_logging",
    "escaped",
    "request_id",
    "timestamp",
]
