"""What keeps a substitution's target where the rule put it, whatever the request holds.

Two guards, applied when a substitution is expanded (both deliberate differences from
Apache, see docs/rewrite.md):

- **A site's base keeps its authority.** Text that follows a ``${site:POOL}`` lookup starts
  with ``/``, ``?`` or ``#``, or a ``/`` is put in between: ``${site:default}$1`` with
  ``$1 = "@evil.example/x"`` is ``http://site:9001/@evil.example/x``, never a URL whose host
  is ``evil.example`` (nor one whose port is ``9001.evil.example``, nor ``9001\\evil``).
- **An expansion cannot move an authority.** A reference (``$N``, ``%N``, ``%{VAR}``, a
  map) expanded where the URL's authority is still open (after ``http://`` and before the
  first ``/``, ``\\``, ``?`` or ``#``) is %-escaped with :func:`escape_authority` up to its
  own first ``/`` (where the authority ends), unless the rule has ``NE``:
  ``http://%{HTTP_HOST}/`` with a Host of ``a@evil.example`` or
  ``evil.example\\.good`` gives a URL no browser follows to ``evil.example``.

Literal text is the rule author's and is never changed (``http://user@host/`` stays).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dispatcher.redirect.escape import escape_authority

#: Kinds of the parts of a substitution, in the order they are expanded.
LITERAL, REFERENCE, SITE = 0, 1, 2
#: The text so far ends inside an ``http(s)`` URL's authority.
_OPEN_AUTHORITY = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^/\\?#]*\Z")
#: A literal beginning that leaves no authority open: a path, or a URL whose authority ends.
_SETTLED = re.compile(r"[^Hh]|[Hh][Tt][Tt][Pp][Ss]?://[^/\\?#]*[/\\?#]")
_AFTER_SITE = ("/", "?", "#")


def needs_guard(kinds: Sequence[int], first_literal: str | None) -> bool:
    """Whether a substitution with parts of ``kinds`` (the first one ``first_literal`` when it
    is literal text) can need either guard; most (``/path/$1``, ``http://host/$1``) cannot."""
    if SITE in kinds:
        return True
    if REFERENCE not in kinds:
        return False
    return first_literal is None or _SETTLED.match(first_literal) is None


def join_target(texts: Sequence[str], kinds: Sequence[int], *, noescape: bool) -> str:
    """The expanded parts ``texts`` (of ``kinds``) joined, with both guards applied."""
    out = ""
    after_site = False
    for text, kind in zip(texts, kinds, strict=True):
        if not text:
            continue
        if after_site:
            after_site = False
            if not text.startswith(_AFTER_SITE):
                out += "/"
            out += text
        elif kind != LITERAL and not noescape and _OPEN_AUTHORITY.match(out) is not None:
            out += _in_authority(text)
        else:
            out += text
        if kind == SITE:
            after_site = True
    return out


def _in_authority(text: str) -> str:
    """An expansion that lands in an open authority: escaped up to its first ``/`` (which
    ends the authority, so ``https://%{HTTP_HOST}%{REQUEST_URI}`` keeps its path)."""
    slash = text.find("/")
    if slash < 0:
        return escape_authority(text)
    return escape_authority(text[:slash]) + text[slash:]
