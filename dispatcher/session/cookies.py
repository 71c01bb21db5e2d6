"""Cookie parsing and ``Set-Cookie`` serialisation (RFC 6265), pure and shared by every edge.

The values written here are signed tokens (``A-Z a-z 0-9 - _ .``), so they never need quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from dispatcher.errors import InvalidValue

SameSite = Literal["lax", "strict", "none"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*", re.ASCII)  # printable, no ';'
_DOMAIN = re.compile(r"\.?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*", re.ASCII)
_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


@dataclass(frozen=True, slots=True)
class CookieAttributes:
    """Where a cookie applies and how it is protected; validated when built.

    ``max_age`` None writes a browser-session cookie (no ``Max-Age``). ``same_site="none"``
    needs ``always_secure`` (browsers drop ``SameSite=None`` cookies without ``Secure``).
    ``HttpOnly`` is always set: scripts have no business with signed state.
    """

    path: str = "/"
    domain: str | None = None
    max_age: int | None = None
    same_site: SameSite = "lax"
    always_secure: bool = False

    def __post_init__(self) -> None:
        if not _PATH.fullmatch(self.path):
            raise InvalidValue(
                "path", f"a cookie path starting with '/' without ';', got {self.path!r}"
            )
        if self.domain is not None and not _DOMAIN.fullmatch(self.domain):
            raise InvalidValue("domain", f"a domain such as '.example.com', got {self.domain!r}")
        if self.max_age is not None and (isinstance(self.max_age, bool) or self.max_age < 1):
            raise InvalidValue("max_age", f"a number of seconds >= 1 or None, got {self.max_age!r}")
        if self.same_site not in ("lax", "strict", "none"):
            raise InvalidValue("same_site", f"'lax', 'strict' or 'none', got {self.same_site!r}")
        if self.same_site == "none" and not self.always_secure:
            raise InvalidValue("same_site", "'none' needs https_only=True (Secure)")


def check_cookie_name(name: str) -> str:
    """``name`` if it is a valid cookie name (an RFC 7230 token), else :class:`InvalidValue`."""
    if not _TOKEN.fullmatch(name):
        raise InvalidValue("cookie_name", f"a cookie name (token characters), got {name!r}")
    return name


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, in the order sent.

    Browsers send the most specific (longest path) first; there can be several when a host
    cookie and a parent-domain cookie share a name. Surrounding double quotes are removed.
    """
    values = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def set_cookie(name: str, value: str, attrs: CookieAttributes, *, secure: bool) -> str:
    """The ``Set-Cookie`` header value that stores ``value``; ``Secure`` if ``secure`` or
    ``attrs.always_secure``."""
    parts = [f"{name}={value}", f"Path={attrs.path}"]
    if attrs.max_age is not None:
        parts.append(f"Max-Age={attrs.max_age}")
    return _finish(parts, attrs, secure=secure)


def delete_cookie(name: str, attrs: CookieAttributes, *, secure: bool) -> str:
    """The ``Set-Cookie`` header value that deletes the cookie (same path and domain)."""
    parts = [f"{name}=", f"Path={attrs.path}", "Max-Age=0", f"Expires={_EPOCH}"]
    return _finish(parts, attrs, secure=secure)


def _finish(parts: list[str], attrs: CookieAttributes, *, secure: bool) -> str:
    if attrs.domain is not None:
        parts.append(f"Domain={attrs.domain}")
    parts.append("HttpOnly")
    parts.append(f"SameSite={attrs.same_site.capitalize()}")
    if secure or attrs.always_secure:
        parts.append("Secure")
    return "; ".join(parts)
