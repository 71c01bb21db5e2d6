"""What the admin API reads from a request, within bounds, before any handler sees it.

The body's size, the nesting of its JSON and the length of each number are capped, so
no body can make the parser recurse, spin or allocate without bound; rule text must have
rules in it and no NUL (PostgreSQL stores no NUL in text). Every refusal is an
:class:`ApiError` (400/413) or an :class:`~dispatcher.errors.InvalidValue` (422) naming
what was wrong.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import re
from array import array
from typing import Any

from starlette.requests import Request

from dispatcher.backends.sites import check_whole, shown
from dispatcher.errors import InvalidValue
from dispatcher.placement.rtt import (
    MAX_REPORT_ENTRIES,
    MAX_RTT,
    MAX_SAMPLES,
    RttEntry,
    is_network,
)

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32  # nesting of JSON arrays and objects
MAX_NUMBER = 40  # characters of one JSON number
MAX_CONNECTIONS = 2**31 - 1  # the database column is a 32-bit integer
MAX_HEADERS = 100
MAX_HEADER_VALUE = 8192
HTTP_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


class ApiError(Exception):
    """An answer with a status, a machine-readable code and the offending field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status, self.code, self.message, self.field = status, code, message, field
        super().__init__(message)


async def read_body(request: Request) -> bytes:
    """The request body, read no further than :data:`MAX_BODY` (413 beyond).

    Kept in the request's state: a second read (authorization looks at a body before its
    handler does) gets the same bytes.
    """
    cached = getattr(request.state, "webfarm_body", None)
    if isinstance(cached, bytes):
        return cached
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.webfarm_body = body
    return body


async def read_json(request: Request) -> Any:
    """The body as JSON, within bounds: its size, its nesting, each number's length.

    ``NaN`` and ``Infinity`` parse (as Python does), and every numeric field's range check
    refuses them, naming the field.
    """
    body = await read_body(request)
    if json_depth(body) > MAX_DEPTH:
        raise ApiError(
            400, "invalid_json", f"the body nests arrays and objects over {MAX_DEPTH} deep"
        )
    try:
        return json.loads(body, parse_int=_int, parse_float=_float)
    except _NumberTooLong as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError too
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


class _NumberTooLong(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(
            f"a number in the body is {len(text)} characters long"
            f" (at most {MAX_NUMBER}): {text[:20]}..."
        )


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise _NumberTooLong(text)
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER:
        raise _NumberTooLong(text)
    return float(text)  # 1e999 is inf: refused by the field's range check


_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKETS = b"[]{}"
_STEPS = bytes.maketrans(_BRACKETS, b"\x01\xff\x01\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)


def json_depth(body: bytes) -> int:
    """How deep the body's arrays and objects nest (an over-estimate for invalid JSON)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return 0
    steps = array("b", _STRINGS.sub(b"", body).translate(_STEPS, _NOT_BRACKETS))
    return max(itertools.accumulate(steps), default=0)


def explain_method(value: str) -> str:
    if not HTTP_TOKEN_RE.fullmatch(value):
        raise InvalidValue("method", f"an HTTP method (a token), got {shown(value)}")
    return value


def explain_remote_addr(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue("remote_addr", f"an IPv4 or IPv6 address, got {shown(value)}") from None
    return value


def explain_headers(raw: Any) -> dict[str, str]:
    """The ``headers`` of an explain request: tokens to printable ASCII, bounded."""
    if not isinstance(raw, dict) or len(raw) > MAX_HEADERS:
        raise InvalidValue("headers", f"an object of at most {MAX_HEADERS} header names to values")
    for name, value in raw.items():
        if not HTTP_TOKEN_RE.fullmatch(name):
            raise InvalidValue("headers", f"header names are tokens, got {shown(name)}")
        if (
            not isinstance(value, str)
            or len(value) > MAX_HEADER_VALUE
            or not all(" " <= c <= "~" or c == "\t" for c in value)
        ):
            raise InvalidValue(
                "headers",
                f"{name}: printable ASCII of at most {MAX_HEADER_VALUE} characters"
                f", got {shown(value)}",
            )
    return raw


_RTT_FIELDS = frozenset({"network", "rtt", "samples"})


def rtt_entries(raw: Any) -> tuple[RttEntry, ...]:
    """A load report's ``rtt`` list: at most :data:`MAX_REPORT_ENTRIES` objects, each a
    canonical ``/24`` or ``/48`` network (listed once), an RTT in seconds from 0 to
    :data:`MAX_RTT` and a whole number of samples >= 1. The first wrong entry is refused,
    naming its index and field (``rtt[3].network``)."""
    if not isinstance(raw, list) or len(raw) > MAX_REPORT_ENTRIES:
        raise InvalidValue(
            "rtt", f"an array of at most {MAX_REPORT_ENTRIES} objects, got {_size(raw)}"
        )
    seen: set[str] = set()
    entries = []
    for index, item in enumerate(raw):
        where = f"rtt[{index}]"
        if not isinstance(item, dict):
            raise InvalidValue(where, f"an object with network, rtt and samples, got {shown(item)}")
        if item.keys() != _RTT_FIELDS:
            extra = sorted(set(item) - _RTT_FIELDS)
            missing = sorted(_RTT_FIELDS - set(item))
            field = f"{where}.{extra[0] if extra else missing[0]}"
            raise InvalidValue(field, "no such field" if extra else "required")
        entries.append(_rtt_entry(item, where, seen))
    return tuple(entries)


def _rtt_entry(item: dict[str, Any], where: str, seen: set[str]) -> RttEntry:
    network, rtt = item["network"], item["rtt"]
    if not is_network(network):
        raise InvalidValue(
            f"{where}.network",
            "a client network in canonical form, exactly /24 (IPv4: 192.0.2.0/24) or /48"
            f" (IPv6: 2001:db8:1::/48), got {shown(network)}",
        )
    if network in seen:
        raise InvalidValue(f"{where}.network", f"{network} is listed twice")
    seen.add(network)
    if (
        isinstance(rtt, bool)
        or not isinstance(rtt, int | float)
        or not (math.isfinite(rtt) and 0 <= rtt <= MAX_RTT)
    ):
        raise InvalidValue(f"{where}.rtt", f"seconds from 0 to {MAX_RTT:g}, got {shown(rtt)}")
    samples = check_whole(item["samples"], f"{where}.samples", 1, MAX_SAMPLES)
    return RttEntry(network, float(rtt), samples)


def _size(raw: Any) -> str:
    return f"{len(raw)} items" if isinstance(raw, list) else shown(raw)


async def read_rules(request: Request) -> bytes:
    """A ``PUT /api/v1/rules`` body: UTF-8 rule text with rules in it and no NUL."""
    body = await read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_rules", f"the rules are not UTF-8: {exc}") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ApiError(400, "invalid_rules", "a NUL character in the rules", f"line {line}")
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.split("\n")):
        raise ApiError(
            400,
            "invalid_rules",
            "no rules in the body: to turn the rules off, PUT 'RewriteEngine off'",
        )
    return body
