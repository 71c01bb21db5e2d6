"""The dispatcher's typed errors: one small tree, each error carrying its context.

Library code raises these; only ``dispatcher.__main__`` turns them into exit codes.
"""

from __future__ import annotations


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """A configuration file or value is invalid.

    ``source`` names the file (or ``<environment>``), ``path`` the key path inside it
    (``sites[1].check.interval``) and ``expected`` what would have been accepted.
    """

    def __init__(self, source: str, path: str, expected: str) -> None:
        self.source = source
        self.path = path
        self.expected = expected
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {expected}")


class InvalidValue(DispatcherError):
    """One value failed validation; ``field`` is its key path relative to the object checked."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class StoreError(DispatcherError):
    """The site registry could not do what was asked."""


class SiteNotFound(StoreError):
    """No site of that name is registered."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no site named {name!r}")


class SiteExists(StoreError):
    """A site of that name is registered already."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a site named {name!r} exists already")


class StoreUnavailable(StoreError):
    """The database could not be reached, or did not answer within the time allowed.

    Nothing was changed: a write that failed this way is rolled back, never applied later.
    """


class StoreRejected(StoreError):
    """The database refused a value (too long, out of range, a NUL character...)."""


class SchemaBehind(StoreError):
    """The database schema is older than this code expects."""

    def __init__(self, current: str | None, head: str, hint: str) -> None:
        self.current = current
        self.head = head
        self.hint = hint
        have = current or "empty (no schema)"
        super().__init__(f"database schema is {have}, this dispatcher needs {head}: run {hint}")


class ListenError(DispatcherError):
    """A listener could not be opened."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot listen on {address}: {reason}")


class GeoDatabaseError(DispatcherError):
    """An IP-location database (``geoip_database``) cannot be used.

    ``path`` names the file and ``reason`` what is wrong with it (missing, not a regular
    file, too large, not a MaxMind DB, corrupt).
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ProxyHeaderError(DispatcherError):
    """A connection's PROXY protocol header is missing, malformed or too long.

    ``kind`` is a short cause chosen by the decoder (``signature``, ``v1``, ``v2``,
    ``too long``), fit for counting; ``expected`` says what a valid header has.
    """

    def __init__(self, kind: str, expected: str) -> None:
        self.kind = kind
        self.expected = expected
        super().__init__(expected)
