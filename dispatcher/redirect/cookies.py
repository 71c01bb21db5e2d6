"""The ``CO`` (cookie) flag: ``NAME:VALUE:DOMAIN[:lifetime[:path[:secure[:httponly[:samesite]]]]]``.

Formatted exactly as mod_rewrite's ``add_cookie`` does; a leading ``;`` selects ``;`` as the
separator instead of ``:``. Empty fields collapse (``apr_strtok``), so ``a:b::x`` has three.
"""

from __future__ import annotations

import datetime
import re

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ATOL = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)", re.ASCII)


def set_cookie(spec: str, now: datetime.datetime) -> tuple[str, str] | None:
    """(cookie name, ``Set-Cookie`` value) for an expanded ``CO`` value; None if incomplete.

    ``lifetime`` is in minutes from ``now``; 0 (or not a number) writes no ``expires``.
    """
    separator = ":"
    if spec.startswith(";"):
        separator, spec = ";", spec[1:]
    fields = [field for field in spec.split(separator) if field][:8]
    if len(fields) < 3:
        return None
    fields += [""] * (8 - len(fields))
    name, value, domain, lifetime, path, secure, httponly, samesite = fields
    cookie = f"{name}={value}; path={path or '/'}; domain={domain}"
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
        cookie += f"; SameSite={samesite}"
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
