"""Warnings a stranger can cause, at most one line per cause per interval.

A forged hand-off token or a bad session cookie costs a client one request and used to cost
the dispatcher one WARNING line: 235,000 lines in 30 s from one client. :class:`Throttle`
is the pure core (an injected monotonic clock, no I/O): the first event of a cause is let
through, the others within ``interval`` seconds are counted, and the first one after the
interval is let through with that count. :class:`ThrottledLog` writes the lines::

    rejecting hand-off token: bad signature (and 2,341 more like it in the last 10 s)

A count is reported with the next line of its cause; a burst that is not followed by
another event of its cause is not reported again (its first line was). Causes are chosen by
the code (an error's class), never taken from the request; at most ``max_causes`` are
tracked, beyond which new causes share one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

#: Seconds between two lines of one cause.
INTERVAL: Final = 10.0
MAX_CAUSES: Final = 256
OVERFLOW: Final = "(other causes)"


@dataclass(frozen=True, slots=True)
class Pass:
    """An event let through: ``suppressed`` were counted since the last one of its cause,
    ``elapsed`` seconds ago (0 for the first)."""

    suppressed: int
    elapsed: float


@dataclass(slots=True)
class _Window:
    started: float
    suppressed: int = 0


class Throttle:
    """One event per cause per ``interval``; the rest are counted. Thread-safe (the WSGI
    middleware calls it from many threads)."""

    def __init__(
        self,
        interval: float = INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_causes: int = MAX_CAUSES,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.interval = interval
        self._clock = clock
        self._max_causes = max_causes
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def hit(self, cause: str) -> Pass | None:
        """Record one event of ``cause``: a :class:`Pass` when it is to be logged, else None."""
        now = self._clock()
        with self._lock:
            if cause not in self._windows and len(self._windows) >= self._max_causes:
                self._forget(now)
                if len(self._windows) >= self._max_causes:
                    cause = OVERFLOW
            window = self._windows.get(cause)
            if window is None:
                self._windows[cause] = _Window(now)
                return Pass(0, 0.0)
            if now - window.started < self.interval:
                window.suppressed += 1
                return None
            passed = Pass(window.suppressed, now - window.started)
            self._windows[cause] = _Window(now)
            return passed

    def _forget(self, now: float) -> None:
        """Drop the causes whose window ended with nothing counted (nothing to report)."""
        for cause, window in list(self._windows.items()):
            if now - window.started >= self.interval and not window.suppressed:
                del self._windows[cause]


class ThrottledLog:
    """Lines on a logger (at ``level``, WARNING by default), through a :class:`Throttle`."""

    def __init__(
        self,
        logger: logging.Logger,
        throttle: Throttle | None = None,
        *,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.throttle = throttle or Throttle()
        self.level = level

    def report(self, cause: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``cause`` was logged less than an interval ago;
        returns whether a line was written."""
        passed = self.throttle.hit(cause)
        if passed is None:
            return False
        if passed.suppressed:
            message += " (and %s more like it in the last %.0f s)"
            args = (*args, f"{passed.suppressed:,}", passed.elapsed)
        self.logger.log(self.level, message, *args)
        return True


class ThrottleFilter(logging.Filter):
    """A logging filter for another library's warnings that a stranger can cause (uvicorn's
    "Invalid HTTP request received." on the admin listener): records at WARNING or above go
    through a :class:`Throttle`, their cause being the message's template (chosen by that
    code, never the request's text); the one let through after a burst carries the count."""

    def __init__(self, throttle: Throttle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        passed = self.throttle.hit(str(record.msg))
        if passed is None:
            return False
        if passed.suppressed:
            record.msg = f"{record.msg} (and {passed.suppressed:,} more like it in the last"
            record.msg += f" {passed.elapsed:.0f} s)"
        return True


def throttle_warnings(logger: logging.Logger) -> None:
    """At most one warning line per kind per interval on ``logger`` (installed once)."""
    if not any(isinstance(f, ThrottleFilter) for f in logger.filters):
        logger.addFilter(ThrottleFilter())


__all__ = [
    "INTERVAL",
    "Pass",
    "Throttle",
    "ThrottleFilter",
    "ThrottledLog",
    "throttle_warnings",
]
