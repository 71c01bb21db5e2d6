"""The PROXY protocol (HAProxy's, versions 1 and 2): a pure decoder and an encoder.

A layer-4 proxy in front of a server loses the client's address: the server sees the proxy's
connection. With the PROXY protocol the proxy sends one header first, naming the client;
the dispatcher's public listener reads it (``[dispatcher] proxy_protocol``) and farmnode's
userspace switch writes it (``send_proxy``). Both use this module.

:func:`decode` looks at the bytes a connection has sent so far and answers one of three
things, whatever the bytes (the property tests feed it arbitrary bytes cut anywhere):

- a :class:`ProxyHeader` (what the header says and how many bytes it took: what follows is
  the application's);
- ``None``: the bytes so far are a strict prefix of a header that may still be valid: read
  more (a caller bounds the wait);
- :class:`~dispatcher.errors.ProxyHeaderError`: not a PROXY header, or a malformed,
  oversized or unsupported one. A wrong byte is refused as soon as it arrives, not after a
  timeout.

Version 1 is one text line of at most :data:`V1_MAX` bytes (``PROXY TCP4 192.0.2.1
198.51.100.7 56324 443\\r\\n``; ``PROXY UNKNOWN ...\\r\\n`` says "use the connection's own
address"). Version 2 is binary: a 12-byte signature, a version and command byte, a family
and transport byte, a 16-bit length, the addresses, then type-length-value records (TLVs).
The ``LOCAL`` command (a health check from the proxy itself), ``AF_UNSPEC`` and ``AF_UNIX``
carry no usable address: :attr:`ProxyHeader.source` is ``None`` and the connection's peer
stays the client. Of the TLVs only ``PP2_TYPE_SSL`` is read (with the client-SSL flag:
the client spoke TLS to the proxy, the scheme is ``https``); the others are checked for
shape and skipped (``PP2_TYPE_CRC32C`` is not verified). A v2 header is at most
:data:`V2_MAX` bytes, TLVs included (the format allows 64 KiB).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from dispatcher.errors import ProxyHeaderError

#: The longest version 1 header, CRLF included (the specification's bound).
V1_MAX: Final = 107
#: The longest version 2 header accepted here, TLVs included.
V2_MAX: Final = 4096
V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: PP2_TYPE_SSL, and its client field's PP2_CLIENT_SSL bit.
PP2_TYPE_SSL: Final = 0x20
PP2_CLIENT_SSL: Final = 0x01

Address = tuple[str, int]
Version = Literal[1, 2]

_V2_HEAD = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_ADDRESS_LENGTHS = {0: 0, 1: _V2_INET.size, 2: _V2_INET6.size, 3: 216}  # by family
# bytes that may appear in a v1 line before its CR: printable ASCII
_V1_BYTES = frozenset(range(0x20, 0x7F))


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded PROXY header.

    ``source`` is the client's (address, port), ``destination`` the address it connected
    to; both ``None`` when the header carries no usable address (v1 ``UNKNOWN``, v2
    ``LOCAL``, ``AF_UNSPEC`` or ``AF_UNIX``): then the connection's peer is the client.
    ``ssl``: the proxy says the client spoke TLS to it (v2 ``PP2_TYPE_SSL``). ``length``
    is the number of bytes the header took. An IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``) is given as the IPv4 address it maps.
    """

    version: Version
    length: int
    source: Address | None = None
    destination: Address | None = None
    ssl: bool = False


def decode(data: bytes, *, max_v2: int = V2_MAX) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, ``None`` if more bytes are needed, or
    :class:`ProxyHeaderError`. Never raises anything else, whatever ``data`` holds."""
    if data[:12] == V2_SIGNATURE:
        return _v2(data, max_v2)
    if data[:6] == V1_PREFIX:
        return _v1(data)
    if V2_SIGNATURE.startswith(data[:12]) or V1_PREFIX.startswith(data[:6]):
        return None  # (shorter than either signature, and a prefix of one)
    raise ProxyHeaderError("signature", "no PROXY protocol header (neither v1 nor v2)")


# --- version 1 ---------------------------------------------------------------------------


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        seen = data[6:V1_MAX]
        if not _V1_BYTES.issuperset(seen[:-1] if seen[-1:] == b"\r" else seen):
            raise ProxyHeaderError("v1", "a PROXY v1 line of printable ASCII ending in CRLF")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("too long", f"a PROXY v1 line of at most {V1_MAX} bytes")
        return None
    line = data[6:end]
    if not _V1_BYTES.issuperset(line):
        raise ProxyHeaderError("v1", "a PROXY v1 line of printable ASCII ending in CRLF")
    length = end + 2
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, length)
    parts = line.split(b" ")
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            "v1", "PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>"
        )
    six = parts[0] == b"TCP6"
    source = (_v1_address(parts[1], six), _v1_port(parts[3]))
    destination = (_v1_address(parts[2], six), _v1_port(parts[4]))
    return ProxyHeader(1, length, source, destination)


def _v1_address(text: bytes, six: bool) -> str:
    kind = ipaddress.IPv6Address if six else ipaddress.IPv4Address
    try:
        if b"%" not in text:  # (no scoped IPv6 address)
            return _text(kind(text.decode("ascii")))
    except ValueError:
        pass
    family = "IPv6" if six else "IPv4"
    raise ProxyHeaderError("v1", f"PROXY v1: a valid {family} address")


def _v1_port(text: bytes) -> int:
    if not (1 <= len(text) <= 5 and text.isdigit()) or (text[0] == 48 and len(text) > 1):
        raise ProxyHeaderError("v1", "PROXY v1: ports are decimal 0-65535 (no leading zero)")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("v1", "PROXY v1: ports are decimal 0-65535 (no leading zero)")
    return port


# --- version 2 ---------------------------------------------------------------------------


def _v2(data: bytes, max_v2: int) -> ProxyHeader | None:
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ProxyHeaderError("v2", "PROXY v2: version 2 in the 13th byte's high nibble")
        if data[12] & 0x0F > 1:
            raise ProxyHeaderError("v2", "PROXY v2: command LOCAL (0) or PROXY (1)")
        proxy = data[12] & 0x0F == 1  # (LOCAL: the family is ignored, as the rest)
        if proxy and len(data) > 13 and (data[13] >> 4 > 3 or data[13] & 0x0F > 2):
            raise ProxyHeaderError("v2", "PROXY v2: a known address family and transport")
    if len(data) < _V2_HEAD.size:
        return None
    _, version_command, family, size = _V2_HEAD.unpack_from(data)
    total = _V2_HEAD.size + size
    if total > max_v2:
        raise ProxyHeaderError("too long", f"a PROXY v2 header of at most {max_v2} bytes")
    if len(data) < total:
        return None
    body = data[_V2_HEAD.size : total]
    if version_command & 0x0F == 0:  # LOCAL: the proxy's own connection; the rest ignored
        return ProxyHeader(2, total)
    family >>= 4
    used = _ADDRESS_LENGTHS[family]
    if len(body) < used:
        raise ProxyHeaderError("v2", "PROXY v2: an address block as long as its family needs")
    ssl = _ssl(memoryview(body)[used:])
    if family == 1:
        src, dst, sport, dport = _V2_INET.unpack_from(body)
        four = ipaddress.IPv4Address
        return ProxyHeader(2, total, (str(four(src)), sport), (str(four(dst)), dport), ssl)
    if family == 2:
        src, dst, sport, dport = _V2_INET6.unpack_from(body)
        six = ipaddress.IPv6Address
        return ProxyHeader(2, total, (_text(six(src)), sport), (_text(six(dst)), dport), ssl)
    return ProxyHeader(2, total, ssl=ssl)  # AF_UNSPEC, AF_UNIX: no IP address


def _ssl(tlvs: memoryview) -> bool:
    """Walk the TLVs (each must fit); whether PP2_TYPE_SSL has the client-SSL bit."""
    ssl, at = False, 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("v2", "PROXY v2: TLVs of type, 16-bit length and value")
        kind, size = tlvs[at], int.from_bytes(tlvs[at + 1 : at + 3], "big")
        start, at = at + 3, at + 3 + size
        if at > len(tlvs):
            raise ProxyHeaderError("v2", "PROXY v2: a TLV that fits in the header")
        if kind == PP2_TYPE_SSL:
            if size < 5:
                raise ProxyHeaderError("v2", "PROXY v2: PP2_TYPE_SSL of at least 5 bytes")
            ssl = bool(tlvs[start] & PP2_CLIENT_SSL)
    return ssl


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as text; an IPv4-mapped IPv6 address as the IPv4 address it maps."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(ip if mapped is None else mapped)


# --- encoding ----------------------------------------------------------------------------


def encode(version: Version, source: Address, destination: Address) -> bytes:
    """The PROXY header a proxy sends before relaying a client's bytes: the client at
    ``source`` connected to ``destination``. Two IPv4 addresses (or IPv4-mapped IPv6 ones)
    make a TCP4 header; otherwise both are written as IPv6 (IPv4 ones mapped)."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        four = True
    else:
        four = False
        src, dst = _six(src), _six(dst)
    if version == 1:
        proto = "TCP4" if four else "TCP6"
        return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")
    if four:
        block = _V2_INET.pack(src.packed, dst.packed, source[1], destination[1])
    else:
        block = _V2_INET6.pack(src.packed, dst.packed, source[1], destination[1])
    family = 0x11 if four else 0x21  # AF_INET or AF_INET6, STREAM
    return _V2_HEAD.pack(V2_SIGNATURE, 0x21, family, len(block)) + block


def encode_unknown(version: Version) -> bytes:
    """A header that names no client: v1 ``UNKNOWN``, v2 ``PROXY`` with ``AF_UNSPEC`` (the
    receiver uses the connection's own address)."""
    if version == 1:
        return b"PROXY UNKNOWN\r\n"
    return _V2_HEAD.pack(V2_SIGNATURE, 0x21, 0x00, 0)


def encode_local() -> bytes:
    """A v2 ``LOCAL`` header: "this connection is the proxy's own, not a client's"."""
    return _V2_HEAD.pack(V2_SIGNATURE, 0x20, 0x00, 0)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.partition("%")[0])  # (no IPv6 scope in the header)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _six(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)


__all__ = [
    "V1_MAX",
    "V2_MAX",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "decode",
    "encode",
    "encode_local",
    "encode_unknown",
]
