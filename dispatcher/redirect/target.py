"""What keeps a substitution's target where the rule put it, whatever the request holds.

Two guards, applied when a substitution is expanded (both deliberate differences from
Apache, see docs/rewrite.md):

- **A site's base keeps its authority.** Text that follows a ``${site:POOL}`` lookup starts
  with ``/``, ``?`` or ``#``, or a ``/`` is put in between: ``${site:default}$1`` with
  ``$1 = "@evil.example/x"`` is ``http://site:9001/@evil.example/x``, never a URL whose host
  is ``evil.example`` (nor one whose port is ``9001.evil.example``, nor ``9001\\evil``).
- **An expansion cannot move an authority.** Where the URL's authority is still open (after
  ``http://`` and before the first ``/``, ``\\``, ``?`` or ``#``), unless the rule has
  ``NE``, a variable or map (``%{HTTP_HOST}``) is %-escaped with :func:`escape_authority`
  whole, and a back-reference (``$N``, ``%N``: what the rule's own pattern let through) up
  to its first ``/``; an expansion that starts with ``/``, ``?`` or ``#`` starts the path
  (``https://%{HTTP_HOST}%{REQUEST_URI}``). ``http://%{HTTP_HOST}/`` with a Host of
  ``a@evil.example``, ``evil.example/x`` or ``evil.example\\.good`` gives a URL no browser
  follows to ``evil.example``.

Literal text is the rule author's and is never changed (``http://user@host/`` stays).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dispatcher.redirect.escape import escape_authority

#: Kinds of the parts of a substitution: literal text, ``$N``/``%N``, ``${site:...}``, and
#: variables and other maps.
LITERAL, BACKREF, SITE, VARIABLE = 0, 1, 2, 3
#: Where a browser ends an http(s) URL's authority.
_AUTHORITY_END = re.compile(r"[/\\?#]")
#: The text so far ends inside an ``http(s)`` URL's authority.
_OPEN_AUTHORITY = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^/\\?#]*\Z")
#: A literal beginning that leaves no authority open: a path, or a URL whose authority ends.
_SETTLED = re.compile(r"[^Hh]|[Hh][Tt][Tt][Pp][Ss]?://[^/\\?#]*[/\\?#]")
_AFTER_SITE = ("/", "?", "#")
#: An authority with no host: nothing, or only userinfo and a port.
_NO_HOST = re.compile(r"(?:[^@]*@)?(?::[^@]*)?\Z")


def needs_guard(kinds: Sequence[int], literals: Sequence[str | None]) -> bool:
    """Whether a substitution with parts of ``kinds`` (``literals``: each part's text when it
    is literal, else None) can need either guard. Most cannot: ``/path/$1``,
    ``http://host/$1``, ``${site:POOL}/$1`` are joined as they are."""
    last = len(kinds) - 1
    for i, kind in enumerate(kinds):
        if kind == SITE and i < last:
            following = literals[i + 1]
            if following is None or not following.startswith(_AFTER_SITE):
                return True
    if all(kind == LITERAL for kind in kinds):
        return False
    first = literals[0]
    if kinds[0] == SITE:
        return False  # the literal "/", "?" or "#" after it ends the site's authority
    return first is None or _SETTLED.match(first) is None


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
            out += _in_authority(text, kind)
        else:
            out += text
        if kind == SITE:
            after_site = True
    return out


def _in_authority(text: str, kind: int) -> str:
    """An expansion that lands in an open authority, escaped (see the module docstring)."""
    if text.startswith(_AFTER_SITE):
        return text  # the path, query or fragment begins: the authority ends before it
    slash = text.find("/") if kind == BACKREF else -1
    if slash < 0:
        return escape_authority(text)
    return escape_authority(text[:slash]) + text[slash:]


def no_host(url: str, scheme_length: int) -> bool:
    """Whether the ``http(s)://`` URL ``url`` (its scheme ``scheme_length`` long) names no
    host: a browser would read the path's first segment as the host."""
    end = _AUTHORITY_END.search(url, scheme_length)
    authority = url[scheme_length : end.start() if end is not None else len(url)]
    return _NO_HOST.match(authority) is not None
