"""RewriteMap implementations: ``txt:``, ``rnd:``, ``int:`` and webfarm's ``site:``.

A lookup returns the value, or None (or ``""``) when the key has none; the caller then
uses the ``|default``. Lookups never raise: a map file that cannot be read at run time
behaves as an empty map, as in Apache.

A map file must be a regular file of at most :data:`MAX_MAP_BYTES`: it is opened without
blocking (a FIFO cannot stall the process), checked with ``fstat`` (a FIFO, a device such as
``/dev/zero`` or a directory is refused) and read with a bound (:func:`read_regular_file`).
"""

from __future__ import annotations

import errno
import os
import random
import re
import string
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from dispatcher.files import read_regular_file
from dispatcher.redirect.escape import escape_uri, unescape_url
from dispatcher.redirect.state import EvalState

Clock = Callable[[], float]

#: How often (seconds, on the injected monotonic clock) a text map checks its file.
CHECK_INTERVAL = 1.0
#: The largest ``txt:``/``rnd:`` map file (bytes); a larger one is refused, not read.
MAX_MAP_BYTES = 16 * 1024 * 1024
_SPACE = " \t\n\v\f\r"
_ENTRY = re.compile(r"([^ \t\n\v\f\r]+)[ \t\n\v\f\r]+([^ \t\n\v\f\r]+)")
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


class RewriteMap(ABC):
    """A named source of ``${name:key}`` values."""

    #: The map type, as in ``RewriteMap NAME kind:...``.
    kind: str = ""

    @abstractmethod
    def lookup(self, key: str, state: EvalState) -> str | None:
        """The value for ``key`` (octets), or None / ``""`` when there is none."""

    def describe(self) -> str:
        """How the map was declared, for explanations."""
        return f"{self.kind}:"


class TextMap(RewriteMap):
    """``txt:`` (and, with ``pick``, ``rnd:``): a file of ``key value`` lines.

    As in Apache: lines starting with ``#`` or white space are ignored, the first line for
    a key wins, only the first word after the key is the value. The file is re-read when
    its modification time or size changes, checked at most every :data:`CHECK_INTERVAL`
    seconds of ``clock``. ``rnd:`` values are ``a|b|c``: one part is picked uniformly, so
    repeating a part weights it.
    """

    def __init__(self, path: Path, clock: Clock, *, pick: bool) -> None:
        """Load ``path`` now; raise OSError when it cannot be read."""
        self.kind = "rnd" if pick else "txt"
        self.path = path
        self.pick = pick
        self.clock = clock
        self.checked = clock()
        self.signature = _signature(path)
        self.entries = _load(path)

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"

    def lookup(self, key: str, state: EvalState) -> str | None:
        self.refresh()
        value = self.entries.get(key)
        if value and self.pick:
            parts = value.split("|")
            rng = state.rng
            index = rng.randrange(len(parts)) if rng is not None else random.randrange(len(parts))  # noqa: S311 - load spreading, not security
            value = parts[index]
        return value

    def refresh(self) -> None:
        """Re-read the file if it changed; an unreadable file empties the map."""
        now = self.clock()
        if now - self.checked < CHECK_INTERVAL:
            return
        self.checked = now
        try:
            signature = _signature(self.path)
            if signature != self.signature:
                self.entries = _load(self.path)
                self.signature = signature
        except OSError:
            self.entries = {}
            self.signature = None


def _signature(path: Path) -> tuple[int, int] | None:
    if "\0" in os.fspath(path):
        raise OSError(errno.EINVAL, "a path without NUL characters")
    info = os.stat(path)
    return info.st_mtime_ns, info.st_size


def _load(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in read_regular_file(path, MAX_MAP_BYTES).decode("latin-1").split("\n"):
        if not line or line[0] == "#" or line[0] in _SPACE:
            continue
        match = _ENTRY.match(line)
        if match:
            entries.setdefault(match.group(1), match.group(2))
    return entries


class InternalMap(RewriteMap):
    """``int:tolower``, ``int:toupper`` (ASCII letters only), ``int:escape``, ``int:unescape``."""

    kind = "int"
    FUNCTIONS: ClassVar[dict[str, Callable[[str], str]]] = {
        "tolower": lambda key: key.translate(_LOWER),
        "toupper": lambda key: key.translate(_UPPER),
        "escape": escape_uri,
        "unescape": lambda key: unescape_url(key, forbid_slash=True)[0],
    }

    def __init__(self, name: str) -> None:
        """Raise KeyError for a function Apache does not have."""
        self.name = name
        self.function = self.FUNCTIONS[name]

    def describe(self) -> str:
        return f"int:{self.name}"

    def lookup(self, key: str, state: EvalState) -> str | None:
        return self.function(key)


class SiteMap(RewriteMap):
    """``site:``: the base URL the caller's site selector picks for the pool named by the key."""

    kind = "site"

    def lookup(self, key: str, state: EvalState) -> str | None:
        return state.site(key)


def monotonic() -> float:
    """The default clock of text maps."""
    return time.monotonic()
