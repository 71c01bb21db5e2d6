"""Apache's URL escaping and unescaping, on octet strings (one character per byte).

Ports of ``ap_escape_uri``, ``escape_backref`` (mod_rewrite's ``B`` flag),
``ap_unescape_url`` and ``ap_normalize_path``, plus the conversions between text and
octet strings and the last-line safety pass applied to everything that becomes a header.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

_HEX = "0123456789abcdef"
_HEXDIGITS = frozenset(string.hexdigits)
_ALNUM = frozenset(string.ascii_letters + string.digits)
#: RFC 3986 unreserved characters, which ``ap_normalize_path`` decodes.
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
#: What ``ap_escape_uri`` leaves alone (gen_test_char.c, T_OS_ESCAPE_PATH).
_URI_SAFE = frozenset(string.ascii_letters + string.digits + "$-_.+!*'(),:;@&=/~")
# Fast paths: a value none of whose characters the matching table would touch is returned
# as it is (every character above U+00FF is caught too: its UTF-8 octets would be escaped).
_URI_UNSAFE = re.compile(r"[^A-Za-z0-9$\-_.+!*'(),:;@&=/~]")
_WIRE_UNSAFE = re.compile("[\x00-\x1f\x7f-\U0010ffff]")
_WIRE_QUERY_UNSAFE = re.compile("[\x00-\x1f#\x7f-\U0010ffff]")
_CTL_OR_SPACE = re.compile("[\x00-\x20\x7f]")
#: What may stay raw in a URL's authority (RFC 3986 reg-name, IP literal, port, and ``%``):
#: everything else, ``@ / \\ ? #`` included, would end the host or start another one.
_AUTHORITY_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]")
#: RFC 6265 cookie-octet (what a cookie value, and here every attribute value, may hold).
_COOKIE_OCTET_UNSAFE = re.compile(r"[^\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]")
#: RFC 9110 tchar (what a cookie name may hold).
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+\-.^_`|~]")


def pct(octet: int) -> str:
    """``%xx`` with lower-case hex digits, as Apache's ``c2x`` writes it."""
    return "%" + _HEX[octet >> 4] + _HEX[octet & 15]


def _table(keep: frozenset[str] | None, escape: range | tuple[int, ...]) -> dict[int, str]:
    if keep is not None:
        return {i: pct(i) for i in range(256) if chr(i) not in keep}
    return {i: pct(i) for i in escape}


_ESCAPE_URI = _table(_URI_SAFE, ())
#: Never allowed raw in a Location: controls, DEL and every non-ASCII octet.
_WIRE_URL = _table(None, (*range(0x20), 0x7F, *range(0x80, 0x100)))
#: A query string handed on after an internal rewrite: as above, and ``#``.
_WIRE_QUERY = {**_WIRE_URL, ord("#"): pct(ord("#"))}
_ESCAPE_AUTHORITY = {i: pct(i) for i in range(256) if _AUTHORITY_UNSAFE.match(chr(i))}
_ESCAPE_COOKIE_OCTET = {i: pct(i) for i in range(256) if _COOKIE_OCTET_UNSAFE.match(chr(i))}
_ESCAPE_TOKEN = {i: pct(i) for i in range(256) if _TOKEN_UNSAFE.match(chr(i))}


def text_octets(text: str) -> str:
    """Rule-file text as the octets Apache would read: its UTF-8 encoding, one char a byte."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def octets(value: str) -> str:
    """A request value as octets: characters up to U+00FF already are; others become UTF-8."""
    if value.isascii() or max(value) <= "\xff":
        return value
    return "".join(c if c <= "\xff" else text_octets(c) for c in value)


def shown(value: str) -> str:
    """Octets as readable text for messages: UTF-8 decoded where valid, escapes otherwise."""
    if value.isascii():
        return value
    raw = value.encode("latin-1", "replace")
    return raw.decode("utf-8", "backslashreplace")


def escape_uri(value: str) -> str:
    """``ap_escape_uri``: %-escape every octet but alphanumerics and ``$-_.+!*'(),:;@&=/~``."""
    if _URI_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_ESCAPE_URI)


def wire_url(value: str) -> str:
    """Escape what must never reach a Location header raw, even under ``NE``."""
    if _WIRE_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_WIRE_URL)


def wire_query(value: str) -> str:
    """A rewritten query string as it goes into a URL: :func:`wire_url`, and ``#`` escaped."""
    if _WIRE_QUERY_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_WIRE_QUERY)


def has_ctl_or_space(value: str) -> bool:
    """Whether ``value`` holds a control character, DEL or a space (Apache's AH10410 test)."""
    return _CTL_OR_SPACE.search(value) is not None


def escape_authority(value: str) -> str:
    """%-escape what cannot stay in a URL's authority without moving it elsewhere.

    Everything but RFC 3986's reg-name, IP-literal and port characters (and ``%``) is
    escaped: ``@`` (userinfo), ``/``, ``\\``, ``?``, ``#`` (the end of the authority as a
    browser reads it), spaces, quotes, ``<>``, controls and non-ASCII octets.
    """
    if _AUTHORITY_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_ESCAPE_AUTHORITY)


def escape_cookie_octets(value: str) -> str:
    """%-escape every octet that is not an RFC 6265 cookie-octet (``;``, ``,``, space, ``"``,
    ``\\``, controls, DEL, non-ASCII): the value cannot end early or carry an attribute."""
    if _COOKIE_OCTET_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_ESCAPE_COOKIE_OCTET)


def escape_token(value: str) -> str:
    """%-escape every octet that is not an RFC 9110 tchar (for a cookie's name)."""
    if _TOKEN_UNSAFE.search(value) is None:
        return value
    return octets(value).translate(_ESCAPE_TOKEN)


def escape_backref(
    value: str, escapes: str | None, keeps: str | None, *, noplus: bool, ctls: bool
) -> str:
    """mod_rewrite's ``escape_backref`` (flags ``B``, ``B=chars``, ``BNP``, ``BCTLS``, ``BNE``).

    A character is a candidate when ``BCTLS`` is set and it is a control or space, when no
    ``B=chars`` list is given (``B`` alone), or when it is in that list; candidates listed in
    ``keeps`` (``BNE=chars``) stay. Candidates that are alphanumeric or ``_`` stay too; a
    space becomes ``+`` unless ``noplus``; the rest become ``%xx``.
    """
    out = []
    for c in octets(value):
        candidate = (c <= " " or c == "\x7f") if ctls else escapes is None
        if escapes is not None and c in escapes:
            candidate = True
        if not candidate or (keeps is not None and c in keeps) or c in _ALNUM or c == "_":
            out.append(c)
        elif c == " " and not noplus:
            out.append("+")
        else:
            out.append(pct(ord(c)))
    return "".join(out)


def unescape_url(value: str, *, forbid_slash: bool) -> tuple[str, int]:
    """``ap_unescape_url``: decode every ``%xx``; returns (decoded, status).

    status is 0, 400 for a malformed escape (kept as is), or 404 for an escape that decodes
    to NUL or (with ``forbid_slash``) to ``/``. As in C, a decoded NUL ends the string.
    """
    if "%" not in value:
        return value, 0
    out: list[str] = []
    status = 0
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 2 < n and value[i + 1] in _HEXDIGITS and value[i + 2] in _HEXDIGITS:
            decoded = chr(int(value[i + 1 : i + 3], 16))
            if decoded == "\0" or (forbid_slash and decoded == "/"):
                status = status or 404
            out.append(decoded)
            i += 3
        else:
            status = 400
            out.append("%")
            i += 1
    text = "".join(out)
    return text.split("\0", 1)[0], status


def normalize_path(path: str, *, decode: bool = True) -> tuple[str, bool]:
    """``ap_normalize_path`` with NOT_ABOVE_ROOT, MERGE_SLASHES and (``decode``) DECODE_UNRESERVED.

    Decodes %-escaped unreserved characters, merges slashes, removes ``.`` and ``..``
    segments. Returns (path, ok); not ok where Apache answers 400: a malformed escape, or
    ``..`` above the root (which otherwise stays at the root).
    """
    buf = list(path)
    n = len(buf)

    def at(i: int) -> str:
        return buf[i] if i < n else ""

    ok, read, write = True, 1, 1
    while read < n:
        if decode and buf[read] == "%":
            hi, lo = at(read + 1), at(read + 2)
            if hi in _HEXDIGITS and lo in _HEXDIGITS and hi and lo:
                c = chr(int(hi + lo, 16))
                if c in UNRESERVED:
                    read += 2
                    buf[read] = c
            else:
                ok = False
        if buf[write - 1] == "/":
            skip = _segment_skip(at, read)
            if skip is not None:
                read, up = skip
                if up:
                    write, ok = _wind_back(buf, write, ok)
                continue
        buf[write] = buf[read]
        write += 1
        read += 1
    return "".join(buf[:write]), ok


def _segment_skip(get: Callable[[int], str], read: int) -> tuple[int, bool] | None:
    """Where to continue reading after a ``/``, ``.`` or ``..`` segment start; None if none.

    The flag says whether the segment was ``..`` (the written path must wind back).
    """
    c = get(read)
    if c == "/":
        while get(read) == "/":
            read += 1
        return read, False
    if c != ".":
        return None
    if get(read + 1) in ("/", ""):
        return (read + 2 if get(read + 1) else read + 1), False
    end = read + 1
    if get(end) == "%" and get(end + 1) == "2" and get(end + 2) in ("e", "E"):
        end += 2
    elif get(end) != ".":
        return None
    if get(end + 1) not in ("/", ""):
        return None
    return (end + 2 if get(end + 1) else end + 1), True


def _wind_back(buf: list[str], write: int, ok: bool) -> tuple[int, bool]:
    if write <= 1:
        return write, False
    write -= 1
    while write and buf[write - 1] != "/":
        write -= 1
    return write, ok


def decode_request_path(raw: str) -> str | int:
    """The path mod_rewrite matches (Apache's ``r->uri``), or the status Apache answers.

    Normalizes (see :func:`normalize_path`) then decodes every escape; 400 for a path that
    does not start with ``/``, a malformed escape or ``..`` above the root; 404 for an
    encoded NUL. An encoded slash is decoded and the path normalized again, as Apache does
    with ``AllowEncodedSlashes On`` (its default, Off, answers 404 instead).
    """
    path = octets(raw)
    if not path.startswith("/"):
        return 400
    if "%" not in path and "/." not in path and "//" not in path:
        return path  # nothing to normalize or decode (the common case)
    if "%" in path or "/." in path or "//" in path:
        path, ok = normalize_path(path)
        if not ok:
            return 400
    decoded, status = unescape_url(path, forbid_slash=False)
    if status:
        return status
    if "%2f" in path.lower():
        decoded = normalize_path(decoded, decode=False)[0]
    return decoded
