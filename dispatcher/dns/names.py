"""Domain names: the configuration's text form, the wire form, and reading names from packets.

Names are kept in wire form (length-prefixed labels, ending with the root's zero byte).
Lookups use the lower-cased wire form: DNS compares names without regard to ASCII case
(RFC 4343), and lower-casing wire bytes touches label text only, since a label's length
byte is at most 63, below ``A`` (65).

:func:`read_name` reads a possibly compressed name from a message received from a stranger.
It never loops and never reads past the message: every compression pointer must point
strictly before the start of the label run that holds it (so each hop goes backwards),
labels are at most 63 bytes, the name at most 255, and the obsolete label types (``0x40``,
``0x80``) are refused.
"""

from __future__ import annotations

import re

from dispatcher.errors import InvalidValue

MAX_NAME = 255
MAX_LABEL = 63
#: A label of a name the operator configures: letters, digits, hyphens and underscores
#: (``_`` for service labels), no hyphen first or last; IDNs in their punycode (``xn--``) form.
LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
ROOT = b"\x00"


class BadName(Exception):
    """A name in a message that cannot be read (the caller answers FORMERR)."""


def from_text(value: object, where: str) -> bytes:
    """The lower-cased wire form of an absolute name the operator wrote (the trailing dot is
    optional: every configured name is absolute); :class:`InvalidValue` naming ``where``."""
    expected = 'an absolute domain name such as "www.farm.example."'
    if not isinstance(value, str) or not value or not value.isascii():
        raise InvalidValue(where, f"{expected} (ASCII; punycode for IDN), got {value!r}")
    text = value.lower()
    if text == ".":
        return ROOT
    labels = text.removesuffix(".").split(".")
    for label in labels:
        if not LABEL_RE.fullmatch(label):
            raise InvalidValue(
                where,
                f"{expected}: labels of 1-63 letters, digits, '-' or '_' "
                f"(not starting or ending with '-'), got {value!r}",
            )
    wire = b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + ROOT
    if len(wire) > MAX_NAME:
        raise InvalidValue(where, f"{expected} of at most {MAX_NAME} bytes, got {value!r}")
    return wire


def to_text(wire: bytes) -> str:
    """The presentation form of an uncompressed wire name (``www.farm.example.``); bytes
    outside printable ASCII, dots and backslashes inside labels are escaped (``\\046``)."""
    if wire == ROOT:
        return "."
    parts: list[str] = []
    i = 0
    while i < len(wire) and wire[i]:
        length = wire[i]
        parts.append("".join(_escaped(b) for b in wire[i + 1 : i + 1 + length]))
        i += 1 + length
    return ".".join(parts) + "."


def _escaped(byte: int) -> str:
    if byte in (0x2E, 0x5C, 0x22, 0x28, 0x29, 0x3B, 0x40, 0x24):  # . \ " ( ) ; @ $
        return "\\" + chr(byte)
    if 0x21 <= byte <= 0x7E:
        return chr(byte)
    return f"\\{byte:03d}"


def labels_of(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, without the root."""
    labels: list[bytes] = []
    i = 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return labels


def parents(wire: bytes) -> list[bytes]:
    """Every proper ancestor of a wire name, nearest first, down to the root."""
    found: list[bytes] = []
    i = 0
    while wire[i]:
        i += 1 + wire[i]
        found.append(wire[i:])
    return found


def is_within(name: bytes, apex: bytes) -> bool:
    """Is ``name`` ``apex`` or below it? (both lower-cased wire names)"""
    if apex == ROOT:
        return True
    if not name.endswith(apex):
        return False
    cut = len(name) - len(apex)
    if cut == 0:
        return True
    i = 0  # the cut must fall on a label boundary
    while i < cut:
        i += 1 + name[i]
    return i == cut


def read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """Read the name at ``offset``: its uncompressed wire form (case as sent) and the offset
    just after it in ``data``. :class:`BadName` when it cannot be read (see the module)."""
    out = bytearray()
    end = -1  # where the name ends in data: after its first pointer, or after its root
    run_start = offset
    i = offset
    size = len(data)
    while True:
        if i >= size:
            raise BadName("the name runs past the end of the message")
        length = data[i]
        if length == 0:
            out.append(0)
            if end < 0:
                end = i + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if i + 1 >= size:
                raise BadName("a compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[i + 1]
            if end < 0:
                end = i + 2
            if target >= run_start:
                raise BadName("a compression pointer that does not point backwards (a loop)")
            i = run_start = target
            continue
        if kind:
            raise BadName(f"a label of an unknown type (0x{length:02x})")
        if i + 1 + length > size:
            raise BadName("a label runs past the end of the message")
        out += data[i : i + 1 + length]
        if len(out) + 1 > MAX_NAME:
            raise BadName(f"a name longer than {MAX_NAME} bytes")
        i += 1 + length
    return bytes(out), end
