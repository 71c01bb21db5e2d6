"""Bounded database calls: every store call has one deadline, and the database cannot
outlive it.

Server-side timeouts (PostgreSQL's ``statement_timeout`` and ``lock_timeout``, SQLite's busy
timeout) cover a live database that is slow. They do nothing for a database that does not
run at all (a stopped or partitioned server): the client would wait on its socket forever.
So each call also arms a :class:`Deadline` on the connection it checks out; when the
deadline passes, the connection's socket is shut down, which ends every wait on it at once.

A write whose caller got an error must never be applied later. The client never sends
``COMMIT`` once its deadline is near (:data:`COMMIT_MARGIN`), and a cut connection that had
not sent ``COMMIT`` is rolled back by the server when it reads the end of the stream. For
the one window left (``COMMIT`` sent, then the server stops before it acts on it), each
PostgreSQL write transaction carries its own server-side deadline (``webfarm.deadline``,
checked by a deferred trigger at commit, migration 0003): a commit after it fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dispatcher.errors import DispatcherError, StoreError, StoreRejected, StoreUnavailable

UPGRADE_HINT = "farm-dispatcher db upgrade --config FILE"
COMMIT_MARGIN = 0.5  # seconds: no COMMIT is sent with less than this left (or a tenth of it)


class Deadline:
    """One store call's time budget; when it runs out, the watched socket is cut."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.connected = False  # a connection was checked out for this call
        self.expired = False  # the watchdog cut the connection
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._socket: socket.socket | None = None

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def margin(self) -> float:
        """How much time must be left to send ``COMMIT``."""
        return min(COMMIT_MARGIN, self.seconds / 10)

    def watch(self, fileno: int) -> None:
        """Shut the socket ``fileno`` down, both ways, when the budget runs out.

        The descriptor is duplicated: closing or reusing the original number later cannot
        make the watchdog cut anything else.
        """
        with self._lock:
            self._release()
            self._socket = socket.socket(fileno=os.dup(fileno))
            self._arm()

    def extend(self, seconds: float) -> None:
        """Move the deadline ``seconds`` later (unless the connection is cut already)."""
        if seconds <= 0:
            return
        with self._lock:
            self.at += seconds
            if self._timer is not None and not self.expired:
                self._timer.cancel()
                self._arm()

    def _arm(self) -> None:
        self._timer = threading.Timer(max(0.0, self.remaining()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """Disarm: the call is over."""
        with self._lock:
            self._release()

    def _expire(self) -> None:
        with self._lock:
            if self._socket is None:
                return
            self.expired = True
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def call_budget(timeout: float) -> float:
    """The time one store call may take for an answer to leave within ``timeout``: the
    caller still has to build and send it (a tenth of it, at most 0.25 s)."""
    return timeout - min(0.25, timeout / 10)


def engine_options(url: str, budget: float) -> dict[str, Any]:
    """Connect, statement, lock and pool-checkout timeouts, all from ``budget`` (seconds)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": budget}}
    ms = max(1, int(budget * 1000))
    options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    return {
        "pool_timeout": budget,
        "connect_args": {
            # libpq counts whole seconds, 2 at least: the one wait that may overrun
            "connect_timeout": max(2, math.floor(budget)),
            "options": options,
        },
    }


def translate(exc: BaseException, deadline: Deadline, url: URL) -> BaseException:  # noqa: PLR0911
    """The typed error for anything a database call raised; our own errors pass through."""
    if isinstance(exc, DispatcherError):
        return exc
    where = url.render_as_string(hide_password=True)
    if deadline.expired:
        return StoreUnavailable(
            f"the database ({where}) did not answer within {deadline.seconds:g} s;"
            " nothing was changed"
        )
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(
            f"no connection to the database ({where}) became free within {deadline.seconds:g} s"
        )
    if isinstance(exc, OverflowError | ValueError):  # sqlite3: "Python int too large"
        return StoreRejected(f"the database cannot store a value: {exc}")
    if not isinstance(exc, SQLAlchemyError):
        return exc
    reason = _reason(exc)
    if isinstance(exc, DBAPIError):
        if isinstance(exc, ProgrammingError) or "no such table" in reason:
            return StoreError(f"the registry is unreadable ({reason}); run {UPGRADE_HINT}")
        if isinstance(exc, DataError):
            return StoreRejected(f"the database refused a value: {reason}")
        if isinstance(exc, IntegrityError):
            return StoreRejected(f"the database refused the change: {reason}")
    if not deadline.connected:
        return StoreUnavailable(f"cannot connect to the database ({where}): {reason}")
    if _timed_out(reason):
        return StoreUnavailable(
            f"the database ({where}) did not answer within {deadline.seconds:g} s ({reason});"
            " nothing was changed"
        )
    return StoreUnavailable(f"database error ({where}): {reason}; nothing was changed")


def _reason(exc: SQLAlchemyError) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _timed_out(reason: str) -> bool:
    lowered = reason.lower()
    return any(
        word in lowered
        for word in ("statement timeout", "lock timeout", "database is locked", "deadline")
    )
