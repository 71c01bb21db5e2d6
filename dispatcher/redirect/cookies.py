"""The ``CO`` (cookie) flag: ``NAME:VALUE:DOMAIN[:lifetime[:path[:secure[:httponly[:samesite]]]]]``.

Formatted as mod_rewrite's ``add_cookie`` does; a leading ``;`` selects ``;`` as the
separator instead of ``:``. Empty fields written in the rule collapse (``apr_strtok``), so
``a:b::x`` has three. Two deliberate differences from Apache keep a request from adding
attributes (docs/rewrite.md): the fields are the ones the rule's text separates (an
expansion holding the separator, or expanding to nothing, does not add, remove or move a
field), and every field is %-escaped to what its place allows (the name to RFC 9110 token
characters, the rest to RFC 6265 cookie-octets: no ``;``, ``,``, space, quote, backslash,
control or non-ASCII octet).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from dispatcher.redirect.escape import escape_cookie_octets, escape_token
from dispatcher.redirect.state import EvalState
from dispatcher.redirect.template import Part, Template

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ATOL = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)", re.ASCII)


class CookieSpec:
    """A compiled ``CO`` value: one template per field, split where the rule's text has the
    separator. ``source`` is the flag's value as written."""

    __slots__ = ("fields", "source")

    def __init__(self, template: Template) -> None:
        self.source = template.source
        parts = template.parts
        separator = ":"
        first = parts[0] if parts else ""
        if isinstance(first, str) and first.startswith(";"):
            separator = ";"
            parts = (first[1:], *parts[1:])
        fields: list[list[Part]] = [[]]
        for part in parts:
            if not isinstance(part, str):
                fields[-1].append(part)
                continue
            pieces = part.split(separator)
            for i, piece in enumerate(pieces):
                if i:
                    fields.append([])
                if piece:
                    fields[-1].append(piece)
        #: Empty fields written in the rule collapse, as with ``apr_strtok``.
        self.fields = tuple(Template(self.source, tuple(field)) for field in fields if field)[:8]

    def expand(self, state: EvalState) -> list[str]:
        """The fields' values for ``state`` (an expansion that is empty stays a field)."""
        return [field.expand(state) for field in self.fields]


def set_cookie(spec: str, now: datetime.datetime) -> tuple[str, str] | None:
    """(cookie name, ``Set-Cookie`` value) for an expanded ``CO`` value; None if incomplete.

    (The separators of ``spec`` all count: this is for text with no expansions in it.)
    """
    separator = ":"
    if spec.startswith(";"):
        separator, spec = ";", spec[1:]
    return make_cookie([field for field in spec.split(separator) if field], now)


def make_cookie(fields: Sequence[str], now: datetime.datetime) -> tuple[str, str] | None:
    """(cookie name, ``Set-Cookie`` value) for a ``CO`` flag's fields; None if incomplete.

    ``lifetime`` is in minutes from ``now``; 0 (or not a number) writes no ``expires``. No
    cookie without a name.
    """
    if len(fields) < 3:
        return None
    fields = [*fields[:8], *[""] * (8 - len(fields))]
    name, value, domain, lifetime, path, secure, httponly, samesite = fields
    if not name:
        return None  # an expansion left no name (Apache would have dropped the field)
    name = escape_token(name)
    cookie = (
        f"{name}={escape_cookie_octets(value)}; path={escape_cookie_octets(path or '/')}; "
        f"domain={escape_cookie_octets(domain)}"
    )
    # Apache builds these with apr_pstrcat, which stops at the first absent part: without a
    # lifetime nothing follows, and without "secure" no HttpOnly either.
    if lifetime:
        minutes = _atol(lifetime)
        if minutes:
            cookie += f"; expires={http_date(now, minutes)}"
        if secure.lower() in ("true", "secure") or secure == "1":
            cookie += "; secure"
            if httponly.lower() in ("true", "httponly") or httponly == "1":
                cookie += "; HttpOnly"
    if samesite and samesite != "0" and samesite.lower() != "false":
        cookie += f"; SameSite={escape_cookie_octets(samesite)}"
    return name, cookie


def http_date(now: datetime.datetime, minutes: int) -> str:
    """``Wdy, DD-Mon-YYYY HH:MM:SS GMT`` for ``now`` plus ``minutes`` (clamped to years 1-9999)."""
    utc = now.astimezone(datetime.UTC)
    try:
        when = utc + datetime.timedelta(minutes=minutes)
    except OverflowError:
        when = datetime.datetime.max if minutes > 0 else datetime.datetime.min
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} GMT"
    )


def _atol(text: str) -> int:
    match = _ATOL.match(text)
    if match is None:
        return 0
    return max(-(2**63), min(2**63 - 1, int(match.group(1))))
