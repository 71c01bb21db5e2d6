"""The checks the node's configuration parsers share (``farmnode.config`` for the node,
``farmnode.service_config`` for its services, ``farmnode.cluster.settings`` for
``[cluster]``, ``farmnode.cluster.group_settings`` for ``[[groups]]``), and
:func:`parse_address` for ``"host:port"`` texts.

Each check raises :class:`Invalid` naming the key path and what was expected; each parser
turns that into a :class:`farmnode.errors.ConfigError` naming the file as well.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = "1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"


class Invalid(Exception):
    """One value failed validation (internal; the parsers make it a ConfigError)."""

    def __init__(self, path: str, expected: str, source: str | None = None) -> None:
        self.path = path
        self.expected = expected
        self.source = source
        super().__init__(f"{path}: {expected}")


def mapping(value: Any, path: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(path, f"{expected}, got {type(value).__name__}")
    return value


def only_keys(raw: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise Invalid(where, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def require(raw: Mapping[str, Any], path: str, *keys: str) -> None:
    for key in keys:
        if key not in raw:
            raise Invalid(f"{path}.{key}", "a value (this key is required)")


def name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise Invalid(path, f"{NAME_RULE}, got {value!r}")
    return value


def choice(
    raw: Mapping[str, Any], path: str, key: str, default: str, choices: Sequence[str]
) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise Invalid(f"{path}.{key}", f"one of {', '.join(choices)}, got {value!r}")
    return value


def flag(raw: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise Invalid(f"{path}.{key}", f"true or false, got {value!r}")
    return value


#: The shortest timeout any setting accepts (seconds); intervals take :data:`LEAST_INTERVAL`.
LEAST_TIMEOUT = 0.01
#: The shortest interval or period (checks, heartbeats, reports, monitors): no busy loops.
LEAST_INTERVAL = 0.05


def seconds(
    raw: Mapping[str, Any],
    path: str,
    key: str,
    default: float,
    most: float,
    *,
    zero: bool = False,
    least: float = LEAST_TIMEOUT,
) -> float:
    """A finite number of seconds from ``least`` (0 with ``zero``) to ``most``."""
    value = raw.get(key, default)
    low = 0.0 if zero else least
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= most
    ):
        raise Invalid(
            f"{path}.{key}", f"a number of seconds >= {low:g} and <= {most:g}, got {value!r}"
        )
    return float(value)


def int_in(raw: Mapping[str, Any], path: str, key: str, default: int, least: int, most: int) -> int:
    value = raw.get(key, default)
    if not_int(value) or not least <= value <= most:
        raise Invalid(f"{path}.{key}", f"a whole number from {least} to {most}, got {value!r}")
    return int(value)


def not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def text(raw: Mapping[str, Any], path: str, key: str, default: str, expected: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise Invalid(f"{path}.{key}", f"{expected}, got {value!r}")
    return value


def visible_ascii(text: str) -> bool:
    return bool(text) and all(0x21 <= ord(c) <= 0x7E for c in text)


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into a normalised IP text and a port.

    The host must be an IP address (IPv6 in brackets); the port 1-65535, or 0 when
    ``allow_port_zero`` (a listener that picks a free port). Raises ``ValueError`` saying
    what is wrong.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("[v6]:port")
        port_text = rest[1:]
        if ":" not in host:
            raise ValueError("brackets only around an IPv6 address")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError("host:port")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, such as [::1]:80")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError("a port number")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError("a port from 1 to 65535" if not allow_port_zero else "a port 0-65535")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("an IP address, not a host name") from None
    return str(address), port


def address(
    value: Any, path: str, allow_port_zero: bool = False, *, source: str | None = None
) -> tuple[str, int]:
    expected = '"host:port" with an IP address ("[v6]:port" for IPv6)'
    if not isinstance(value, str):
        raise Invalid(path, f"{expected}, got {value!r}", source)
    try:
        return parse_address(value, allow_port_zero=allow_port_zero)
    except ValueError as exc:
        raise Invalid(path, f"{expected}: {exc}, got {value!r}", source) from None


IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def ifname(value: Any, path: str) -> str:
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise Invalid(
            path, f"a network interface name such as eth0 (1-15 characters), got {value!r}"
        )
    return value
