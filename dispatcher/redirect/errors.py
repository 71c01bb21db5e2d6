"""The rewrite engine's typed errors.

Compiling rules raises :class:`RuleSyntaxError` (a bad rule set is rejected whole, so the
caller keeps the program it runs) or :class:`RuleFileError` (a file could not be read).
Evaluating a compiled program never raises for any request: what Apache would answer with
an error status becomes an ``Outcome`` with that status instead.
"""

from __future__ import annotations

from dispatcher.errors import DispatcherError


class RewriteError(DispatcherError):
    """Base of every error the rewrite engine raises."""


class RuleSyntaxError(RewriteError):
    """A rule file is invalid.

    ``filename`` names the file (or ``<rules>`` for text without one), ``line`` is the
    1-based line where the offending directive starts, ``message`` says what was wrong.
    ``str()`` reads ``FILE:LINE: message``.
    """

    def __init__(self, filename: str, line: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.message = message
        super().__init__(f"{filename}:{line}: {message}")


class RuleFileError(RewriteError):
    """A rule file could not be read at all; ``filename`` names it, ``reason`` says why."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"{filename}: {reason}")
