"""The session package's typed errors: one small tree under :class:`SessionError`.

Reading a token can only fail with a :class:`BadToken` (or one of its subclasses), whatever
the input; writing one fails with :class:`TokenTooLarge` or :class:`UnserializableState`.
"""

from __future__ import annotations

from datetime import datetime

from dispatcher.errors import DispatcherError


class SessionError(DispatcherError):
    """Base of every error raised by :mod:`dispatcher.session`."""


class BadToken(SessionError):
    """A token was rejected. ``purpose`` is the salt it was checked against (what kind of
    token it claimed to be), ``reason`` says what was wrong with it."""

    def __init__(self, purpose: str, reason: str) -> None:
        self.purpose = purpose
        self.reason = reason
        super().__init__(f"bad {purpose} token: {reason}")


class TokenExpired(BadToken):
    """The signature is valid but older than ``max_age`` seconds (``age`` seconds at the
    check); ``date_signed`` is when it was issued (aware, UTC)."""

    def __init__(self, purpose: str, date_signed: datetime, age: int, max_age: int) -> None:
        self.date_signed = date_signed
        self.age = age
        self.max_age = max_age
        super().__init__(
            purpose, f"expired: signed {date_signed.isoformat()}, {age} s old > {max_age} s"
        )


class TokenReplayed(BadToken):
    """A single-use token was presented again; ``token_id`` is its id."""

    def __init__(self, purpose: str, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(purpose, f"token {token_id!r} was used already")


class WrongTarget(BadToken):
    """A hand-off token bound to another site: ``expected`` here, ``actual`` in the token."""

    def __init__(self, purpose: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(purpose, f"issued for {actual!r}, this is {expected!r}")


class TokenTooLarge(SessionError):
    """Refused at write time: ``what`` would be ``size`` bytes, over ``limit``. Nothing is cut."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} would be {size} bytes, over the limit of {limit} bytes")


class UnserializableState(SessionError):
    """The state cannot be written as standard JSON; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"session state is not JSON-serializable: {reason}")
