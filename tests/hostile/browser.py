"""Where a browser goes with a ``Location``: the WHATWG URL parser, as far as the origin.

Only what decides the scheme, host and port of an http(s) URL is implemented: leading and
trailing C0 controls and spaces stripped, tabs and newlines removed, ``\\`` read as ``/``,
any number of slashes after ``http:``, userinfo up to the last ``@``, the host
percent-decoded, IDNA-mapped and checked for forbidden code points, IPv4 in any of its
number spellings (``127.1``, ``0x7f.1``, ``2130706433``), bracketed IPv6, the port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)\Z", re.DOTALL)
_C0_OR_SPACE = "".join(chr(i) for i in range(0x21))
_FORBIDDEN_HOST = set("\0\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = _FORBIDDEN_HOST | {chr(i) for i in range(0x20)} | {"%", "\x7f"}
_AUTHORITY_END = re.compile(r"[/\\?#]")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class NotHttp(ValueError):
    """The Location names a scheme other than http or https (``javascript:``, ``data:``)."""


def origin_of(location: str, base: Origin) -> Origin | None:
    """The origin a browser at ``base`` goes to for ``location``; None if the URL is invalid
    (the browser goes nowhere). Raises :class:`NotHttp` for another scheme."""
    text = location.strip(_C0_OR_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    match = _SCHEME.match(text)
    if match is not None:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme not in DEFAULT_PORTS:
            raise NotHttp(location)
        if scheme == base.scheme and not rest.startswith(("/", "\\")):
            return base  # "http:path" relative to an http base
        return _authority(scheme, rest.lstrip("/\\"))
    if text[:2].replace("\\", "/") == "//":
        return _authority(base.scheme, text.lstrip("/\\"))
    return base  # a relative path, query or fragment


def _authority(scheme: str, rest: str) -> Origin | None:
    end = _AUTHORITY_END.search(rest)
    authority = rest if end is None else rest[: end.start()]
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
        if not authority:
            return None
    host_text, port_text = _split_port(authority)
    if not host_text:
        return None
    host = parse_host(host_text)
    if host is None:
        return None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    return Origin(scheme, host, port)


def _split_port(authority: str) -> tuple[str, str]:
    inside = False
    for i, c in enumerate(authority):
        if c == "[":
            inside = True
        elif c == "]":
            inside = False
        elif c == ":" and not inside:
            return authority[:i], authority[i + 1 :]
    return authority, ""


def parse_host(text: str) -> str | None:
    """The WHATWG host parser for a special scheme; None on failure."""
    if text.startswith("["):
        if not text.endswith("]"):
            return None
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            return None
    try:
        domain = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    domain = domain.lower()
    if not domain or any(c in _FORBIDDEN_DOMAIN for c in domain):
        return None
    if _ends_in_number(domain):
        return _ipv4(domain)
    return domain


def _ends_in_number(domain: str) -> bool:
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isdigit():
        return True
    return _ipv4_number(last) is not None


def _ipv4_number(part: str) -> int | None:
    if not part:
        return None
    base, digits = 10, part
    if part[:2] in ("0x", "0X"):
        base, digits = 16, part[2:]
    elif len(part) > 1 and part[0] == "0":
        base, digits = 8, part[1:]
    if not digits:
        return 0
    try:
        return int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        return None


def _ipv4(domain: str) -> str | None:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for i, n in enumerate(values[:-1]):
        address += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(address))


def named_host(host_header: str) -> str | None:
    """The host a Host header names, read leniently (surrounding white space, the port and
    trailing dots left out, brackets optional around IPv6); None when it names no valid
    host (``a@evil.example``, ``evil.example/x`` name none)."""
    value = host_header.strip(" \t")
    if value.startswith("[") or value.count(":") > 1:
        inner = value[1:].partition("]")[0] if value.startswith("[") else value
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return None
    host, _ = _split_port(value)
    parsed = parse_host(host) if host else None
    return parsed.rstrip(".") if parsed else None
