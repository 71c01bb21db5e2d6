"""The service manager's notification protocol (``sd_notify``), without libsystemd.

Under systemd with ``Type=notify`` the service manager passes ``$NOTIFY_SOCKET``: a unix
datagram socket (a path, or an abstract name written with a leading ``@``). The daemon
sends newline-separated ``VARIABLE=value`` datagrams to it:

- ``READY=1`` once its listeners accept connections (:meth:`Notifier.ready`);
- ``RELOADING=1`` and ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC`` in microseconds) when a
  SIGHUP reload begins, ``READY=1`` when it is over (:meth:`Notifier.reloading`);
- ``STOPPING=1`` when it begins to stop (:meth:`Notifier.stopping`);
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the daemon is live
  (:func:`keep_watchdog`, with ``WatchdogSec=`` in the unit);
- ``STATUS=`` one line for ``systemctl status``.

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call does nothing.
A send that fails is logged once and never raised: the daemon runs on whatever the
service manager does. Both packages use this module; child processes never inherit the
variables (the dispatcher's workers get an environment without them, farmnode's children
an allowlist).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger("webfarm.sdnotify")

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
#: The service manager's variables no child process should see.
VARIABLES: Final = frozenset({NOTIFY_SOCKET, "WATCHDOG_USEC", "WATCHDOG_PID"})
#: The longest ``STATUS=`` text sent (characters).
MAX_STATUS: Final = 512


def socket_address(value: str) -> str | None:
    """The address ``$NOTIFY_SOCKET`` names: a path (absolute), or an abstract name
    (``@name`` -> ``\\0name``); ``None`` for anything else (ignored, as libsystemd does)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications to the socket ``environ`` names (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get(NOTIFY_SOCKET, ""))
        self.watchdog_interval = _watchdog(env)
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", status)

    def reloading(self, status: str | None = None) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}", status)

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", status)

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send("", text)

    def send(self, state: str, status: str | None = None) -> bool:
        """Send ``state`` (and ``STATUS=status``, one line); False if it could not go."""
        if self.address is None:
            return False
        lines = [state] if state else []
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    """``text`` fit for one ``STATUS=`` line: no line breaks or controls, bounded."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat[:MAX_STATUS]


def _watchdog(env: Mapping[str, str]) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half ``$WATCHDOG_USEC``), when the watchdog is
    on and meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def keep_watchdog(notifier: Notifier, live: Callable[[], bool]) -> None:
    """Send ``WATCHDOG=1`` every half watchdog interval while ``live()`` says so; a daemon
    that is not live (or whose loop is stuck) lets the service manager restart it. Returns
    at once when there is no watchdog."""
    interval = notifier.watchdog_interval
    if interval is None or not notifier.enabled:
        return
    warned = False
    while True:
        if live():
            notifier.watchdog()
            warned = False
        elif not warned:
            warned = True
            log.error("not live: the service manager's watchdog is no longer fed")
        await asyncio.sleep(interval)


__all__ = ["NOTIFY_SOCKET", "VARIABLES", "Notifier", "keep_watchdog", "socket_address"]
